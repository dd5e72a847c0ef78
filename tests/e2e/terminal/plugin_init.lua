-- Neovim 0.11 with the Forkyard plugin, set up as its README says. Instrumentation for
-- the test: agents' states go to FORKYARD_TEST_STATES (through the plugin's own
-- `User ForkyardAgentChanged` event), and three command agents are dispatched once the
-- server attaches.
vim.opt.runtimepath:prepend(assert(os.getenv('FORKYARD_TEST_PLUGIN')))
local states = assert(os.getenv('FORKYARD_TEST_STATES'))

require('forkyard').setup({ cmd = vim.json.decode(assert(os.getenv('FORKYARD_TEST_SERVER_CMD'))) })

vim.api.nvim_create_autocmd('User', {
  pattern = 'ForkyardAgentChanged',
  callback = function(args)
    local file = assert(io.open(states, 'a'))
    file:write(('%d %s\n'):format(args.data.number, args.data.state))
    file:close()
  end,
})

dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'dispatch_on_attach.lua'))
