-- Shared by the scenario scripts that tests/e2e/test_neovim_plugin.py runs in a headless
-- Neovim: `nvim --headless --clean --cmd "set rtp^=clients/neovim" -l SCENARIO CONFIG.json`.
-- A scenario does what a user does with the plugin and records what it sees in `result`,
-- which goes to the JSON file pytest asserts on. Waits are on conditions (vim.wait keeps
-- the event loop, and so the LSP client, running), never fixed sleeps.
local H = {}

H.config = vim.json.decode(table.concat(vim.fn.readfile(_G.arg[1]), '\n'))
H.timeout = H.config.timeout_ms or 30000
H.result = { steps = {}, notifications = {}, timings = {}, progress = {} }

local started = vim.uv.hrtime()

function H.step(name)
  table.insert(H.result.steps, name)
  H.result.timings[name] = math.floor((vim.uv.hrtime() - started) / 1e6)
end

--- Wait until `condition()` is truthy; fail with `what` at the deadline.
function H.wait_for(what, condition)
  local value
  local ok = vim.wait(H.timeout, function()
    value = condition()
    return value
  end, 20)
  if not ok then
    error('timed out waiting for ' .. what, 2)
  end
  return value
end

function H.lines(buf)
  return vim.api.nvim_buf_get_lines(buf, 0, -1, false)
end

function H.text(buf)
  return table.concat(H.lines(buf), '\n') .. '\n'
end

--- Every vim.notify goes to the result (headless has no UI to show it).
function H.capture_notifications()
  vim.notify = function(message, level)
    table.insert(H.result.notifications, { message = message, level = level })
  end
end

--- Every LspProgress event, and vim.lsp.status() as it was then.
function H.capture_progress()
  vim.api.nvim_create_autocmd('LspProgress', {
    callback = function(args)
      local value = args.data.params.value
      table.insert(H.result.progress, {
        kind = value.kind,
        title = value.title,
        message = value.message,
        cancellable = value.cancellable,
        status = vim.lsp.status(),
      })
    end,
  })
end

function H.notified(pattern)
  for _, n in ipairs(H.result.notifications) do
    if n.message:find(pattern) then
      return n
    end
  end
  return nil
end

function H.forkyard_diagnostics(buf)
  local found = vim.tbl_filter(function(d)
    return d.source == 'forkyard'
  end, vim.diagnostic.get(buf))
  table.sort(found, function(a, b)
    return a.lnum < b.lnum
  end)
  return found
end

--- Plugin setup as a user would write it, with the server command of the test.
function H.setup(extra)
  local opts = vim.tbl_deep_extend('force', { cmd = H.config.server_cmd }, extra or {})
  require('forkyard').setup(opts)
end

--- The buffer of `path`, opened as `:edit` does, once the Forkyard client attached.
function H.edit_attached(path)
  vim.cmd.edit(vim.fn.fnameescape(path))
  local buf = vim.api.nvim_get_current_buf()
  local client = H.wait_for('the forkyard client to attach and initialize', function()
    local c = vim.lsp.get_clients({ bufnr = buf, name = 'forkyard' })[1]
    return c and c.initialized and c
  end)
  return buf, client
end

function H.session()
  return require('forkyard.session').get(H.config.repo)
end

function H.agent(number)
  local session = H.session()
  return session and session:agent(number)
end

function H.wait_agent_state(number, states)
  local wanted = type(states) == 'table' and states or { states }
  return H.wait_for(('agent #%d to be %s'):format(number, table.concat(wanted, '/')), function()
    local agent = H.agent(number)
    return agent and vim.tbl_contains(wanted, agent.state) and agent
  end)
end

--- Stop every client and wait for the servers to exit, so nothing outlives the test.
function H.stop_clients()
  local clients = vim.lsp.get_clients({ name = 'forkyard' })
  for _, client in ipairs(clients) do
    if vim.fn.has('nvim-0.11') == 1 then
      client:stop()
    else
      client.stop()
    end
  end
  H.wait_for('the servers to exit', function()
    return #vim.lsp.get_clients({ name = 'forkyard' }) == 0
  end)
end

--- Run `scenario`, write the result file, exit non-zero on failure.
function H.run(scenario)
  local ok, err = xpcall(scenario, debug.traceback)
  H.result.ok = ok
  H.result.error = not ok and tostring(err) or nil
  H.result.nvim_version = tostring(vim.version())
  if ok then
    local stopped, stop_err = pcall(H.stop_clients)
    if not stopped then
      H.result.ok = false
      H.result.error = tostring(stop_err)
    end
  end
  vim.fn.writefile({ vim.json.encode(H.result) }, H.config.result)
  if not H.result.ok then
    io.stderr:write(tostring(H.result.error) .. '\n')
    os.exit(1)
  end
end

return H
