-- :Forkyard, available before (and without) setup(); setup() adds starting the server
-- for every repository buffer and the keymaps you ask for.
if vim.g.loaded_forkyard then
  return
end
vim.g.loaded_forkyard = true

if vim.fn.has('nvim-0.10') ~= 1 then
  vim.api.nvim_echo({ { 'forkyard.nvim needs Neovim 0.10 or newer', 'WarningMsg' } }, true, {})
  return
end

vim.api.nvim_create_user_command('Forkyard', function(opts)
  require('forkyard.commands').run(opts)
end, {
  nargs = '*',
  range = true,
  desc = 'Forkyard: chat, agents and review',
  complete = function(lead, cmdline, cursor)
    return require('forkyard.commands').complete(lead, cmdline, cursor)
  end,
})
