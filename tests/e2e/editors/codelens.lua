-- Code lenses in a real Neovim (0.11) with its stock LSP client and no plugin, run as
-- `nvim --headless --clean -l codelens.lua CONFIG.json`: dispatch an agent, refresh the
-- buffer's lenses as a user's autocmd does, and run the lens on the first hunk's line
-- (`vim.lsp.codelens.run()`, choosing "Apply hunk" in its menu). What it saw goes to the
-- JSON result file that pytest asserts on.

local config = vim.json.decode(table.concat(vim.fn.readfile(_G.arg[1]), '\n'))
local timeout = config.timeout_ms
local result = { steps = {}, menus = {} }

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

--- The buffer's lenses that have their command (resolved), by line.
local function resolved_lenses(buf)
  local found = {}
  for _, lens in ipairs(vim.lsp.codelens.get(buf)) do
    if lens.command then
      table.insert(found, { line = lens.range.start.line, title = lens.command.title })
    end
  end
  table.sort(found, function(a, b)
    return a.line < b.line or (a.line == b.line and a.title < b.title)
  end)
  return found
end

local function scenario()
  vim.cmd.edit(vim.fn.fnameescape(config.file))
  local buf = vim.api.nvim_get_current_buf()
  local client_id = vim.lsp.start({
    name = 'forkyard',
    cmd = config.server_cmd,
    root_dir = config.repo,
    handlers = {
      ['window/showMessageRequest'] = function()
        return vim.NIL
      end,
      ['window/showMessage'] = function() end,
    },
  }, { bufnr = buf })
  local client = assert(vim.lsp.get_client_by_id(assert(client_id)))
  wait_for('the server to initialize', function()
    return client.initialized
  end)
  result.code_lens_provider = client.server_capabilities.codeLensProvider
  table.insert(result.steps, 'initialized')

  client:exec_cmd({ title = 'dispatch', command = 'forkyard.dispatch', arguments = { config.task } }, { bufnr = buf })
  -- A user's config refreshes lenses on BufEnter/CursorHold; the script asks until the
  -- agent is done and its lenses are resolved.
  local lenses = wait_for('resolved lenses', function()
    vim.lsp.codelens.refresh({ bufnr = buf })
    vim.wait(200)
    local found = resolved_lenses(buf)
    local applies = vim.tbl_filter(function(l)
      return l.title:match('^Apply hunk') ~= nil
    end, found)
    return #applies == config.expected_hunks and found
  end)
  result.lenses = lenses
  table.insert(result.steps, 'lenses')

  -- Run the lens on the first hunk's line; its menu offers the lenses of that line.
  local first = lenses[1].line
  vim.api.nvim_win_set_cursor(0, { first + 1, 0 })
  vim.ui.select = function(items, opts, on_choice)
    local titles = {}
    local chosen
    for index, item in ipairs(items) do
      local title = opts.format_item and opts.format_item(item) or tostring(item)
      table.insert(titles, title)
      if not chosen and title:match('Apply hunk') then
        chosen = index
      end
    end
    table.insert(result.menus, titles)
    on_choice(chosen and items[chosen] or nil, chosen)
  end
  local before = buffer_text(buf)
  vim.lsp.codelens.run()
  wait_for('the hunk to land in the buffer', function()
    return buffer_text(buf) ~= before
  end)
  result.text_after = buffer_text(buf)
  result.modified = vim.bo[buf].modified
  table.insert(result.steps, 'applied')

  client:stop()
  wait_for('the server to exit', function()
    return client:is_stopped()
  end)
end

local ok, err = xpcall(scenario, debug.traceback)
result.ok = ok
result.error = not ok and tostring(err) or nil
vim.fn.writefile({ vim.json.encode(result) }, config.result)
if not ok then
  io.stderr:write(tostring(err) .. '\n')
  os.exit(1)
end
