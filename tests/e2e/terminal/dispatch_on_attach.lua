-- Instrumentation shared by the Neovim set-ups of the typing test: once the server has
-- attached, dispatch the test's command agents (FORKYARD_TEST_TASKS, a JSON list).
local tasks = vim.json.decode(assert(os.getenv('FORKYARD_TEST_TASKS')))

vim.api.nvim_create_autocmd('LspAttach', {
  once = true,
  callback = function(args)
    local client = assert(vim.lsp.get_client_by_id(args.data.client_id))
    for _, task in ipairs(tasks) do
      client:request('workspace/executeCommand', { command = 'forkyard.dispatch', arguments = { task } })
    end
  end,
})
