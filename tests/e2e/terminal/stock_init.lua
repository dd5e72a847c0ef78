-- Neovim 0.11 with only the README's stock set-up (vim.lsp.config + vim.lsp.enable).
-- Instrumentation for the test, not part of what a user configures: agents' states go to
-- FORKYARD_TEST_STATES, and three command agents are dispatched once the server attaches.
local states = assert(os.getenv('FORKYARD_TEST_STATES'))

local function record(agent)
  local file = assert(io.open(states, 'a'))
  file:write(('%d %s\n'):format(agent.number, agent.state))
  file:close()
end

-- The README's set-up, word for word but for the command.
vim.lsp.config('forkyard', {
  cmd = vim.json.decode(assert(os.getenv('FORKYARD_TEST_SERVER_CMD'))),
  root_markers = { '.git' },
  handlers = {
    -- Neovim's own handler ends each message with a newline, which asks "Press ENTER".
    ['window/showMessage'] = function(_, m)
      vim.notify(m.message, ({ vim.log.levels.ERROR, vim.log.levels.WARN })[m.type] or vim.log.levels.INFO)
    end,
  },
})
vim.lsp.enable('forkyard')

-- Instrumentation.
vim.lsp.handlers['forkyard/agent/changed'] = function(_, params)
  record(params.agent)
end

dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'dispatch_on_attach.lua'))
