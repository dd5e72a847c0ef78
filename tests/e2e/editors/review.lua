-- The review flow in a real Neovim (0.11), run as `nvim --headless --clean -l review.lua
-- CONFIG.json`. It does what a user does: open a file, dispatch an agent, wait for its
-- hints, apply one hunk with the quickfix code action, then the rest of the file with the
-- source action, and undo. Every observation goes to the JSON result file that pytest
-- asserts on; the exit status is non-zero when a step failed or timed out.

local config = vim.json.decode(table.concat(vim.fn.readfile(_G.arg[1]), '\n'))
local timeout = config.timeout_ms
local result = { steps = {}, messages = {}, message_requests = {}, commands = {} }

local function step(name)
  table.insert(result.steps, name)
end

local function write_result()
  vim.fn.writefile({ vim.json.encode(result) }, config.result)
end

--- Wait until `condition()` is truthy, keeping the event loop (and so the LSP client)
--- running meanwhile; fail with `what` when the deadline passes.
local function wait_for(what, condition)
  local value
  local ok = vim.wait(timeout, function()
    value = condition()
    return value
  end, 20)
  if not ok then
    error('timed out waiting for ' .. what, 2)
  end
  return value
end

local function buffer_text(buf)
  return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, true), '\n') .. '\n'
end

local function forkyard_diagnostics(buf)
  local found = {}
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    if d.source == 'forkyard' then
      table.insert(found, d)
    end
  end
  table.sort(found, function(a, b)
    return a.lnum < b.lnum
  end)
  return found
end

local function describe(diagnostics)
  local out = {}
  for _, d in ipairs(diagnostics) do
    table.insert(out, {
      lnum = d.lnum,
      col = d.col,
      end_lnum = d.end_lnum,
      end_col = d.end_col,
      severity = d.severity,
      message = d.message,
    })
  end
  return out
end

local function scenario()
  vim.cmd.edit(vim.fn.fnameescape(config.file))
  local buf = vim.api.nvim_get_current_buf()

  local client_id = vim.lsp.start({
    name = 'forkyard',
    cmd = config.server_cmd,
    root_dir = config.repo,
    handlers = {
      -- The default handler asks with inputlist(), which would wait forever headless;
      -- the review is done with code actions, so the "agent is done" question is noted
      -- and left unanswered (null), as a user closing the prompt would.
      ['window/showMessageRequest'] = function(_, params)
        table.insert(result.message_requests, {
          message = params.message,
          actions = vim.tbl_map(function(a)
            return a.title
          end, params.actions or {}),
        })
        return vim.NIL
      end,
      ['window/showMessage'] = function(_, params)
        table.insert(result.messages, params.message)
      end,
      ['workspace/executeCommand'] = function(err, res, ctx)
        table.insert(result.commands, {
          command = ctx.params.command,
          error = err and err.message or nil,
          result = res,
        })
      end,
    },
  }, { bufnr = buf })
  assert(client_id, 'vim.lsp.start returned no client')
  local client = assert(vim.lsp.get_client_by_id(client_id))
  wait_for('the server to initialize', function()
    return client.initialized
  end)
  result.offset_encoding = client.offset_encoding
  result.resolve_provider = vim.tbl_get(client.server_capabilities, 'codeActionProvider', 'resolveProvider')
  step('initialized')

  client:exec_cmd({ title = 'dispatch', command = 'forkyard.dispatch', arguments = { config.task } }, { bufnr = buf })
  local diagnostics = wait_for('forkyard diagnostics', function()
    local found = forkyard_diagnostics(buf)
    return #found == config.expected_hunks and found
  end)
  result.diagnostics = describe(diagnostics)
  step('diagnostics')

  -- The quickfix on the first hunk, as `:lua vim.lsp.buf.code_action()` with the cursor there.
  local hunk_line = diagnostics[1].lnum
  vim.api.nvim_win_set_cursor(0, { hunk_line + 1, 0 })
  local before_hunk = buffer_text(buf)
  local titles_seen = {}
  vim.lsp.buf.code_action({
    apply = true,
    filter = function(action)
      table.insert(titles_seen, action.title)
      return action.title:match('^Apply hunk') ~= nil
    end,
  })
  wait_for('the hunk to land in the buffer', function()
    return buffer_text(buf) ~= before_hunk
  end)
  result.titles_at_hunk = titles_seen
  result.text_after_hunk = buffer_text(buf)
  result.hunk_line_after = vim.api.nvim_buf_get_lines(buf, hunk_line, hunk_line + 1, true)[1]
  result.modified_after_hunk = vim.bo[buf].modified
  local remaining = wait_for('the applied hunk to lose its hint', function()
    local found = forkyard_diagnostics(buf)
    return #found == config.expected_hunks - 1 and found
  end)
  result.diagnostics_after_hunk = describe(remaining)
  step('hunk applied')

  -- The rest of the file: the source action, from the top of the buffer. In between, the
  -- user would have typed something, which closes the undo block; a script must say so.
  vim.o.undolevels = vim.o.undolevels
  vim.api.nvim_win_set_cursor(0, { 1, 0 })
  local before_file = buffer_text(buf)
  vim.lsp.buf.code_action({
    apply = true,
    context = { only = { 'source.forkyard' } },
    filter = function(action)
      return action.title:match('to this file$') ~= nil
    end,
  })
  wait_for('the file to land in the buffer', function()
    return buffer_text(buf) ~= before_file
  end)
  result.text_after_file = buffer_text(buf)
  wait_for('the hints to clear', function()
    return #forkyard_diagnostics(buf) == 0
  end)
  step('file applied')

  -- One apply is one undo step.
  vim.cmd.undo()
  result.text_after_undo = buffer_text(buf)
  step('undone')

  client:stop()
  wait_for('the server to exit', function()
    return client:is_stopped()
  end)
  step('stopped')
end

local ok, err = xpcall(scenario, debug.traceback)
result.ok = ok
result.error = not ok and tostring(err) or nil
write_result()
if not ok then
  io.stderr:write(tostring(err) .. '\n')
  os.exit(1)
end
