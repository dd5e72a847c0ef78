-- Run by tests/e2e/test_neovim_agents_format.py: the agents list's line for each agent of
-- the config (decoded as the LSP client decodes the server's JSON, so a null is vim.NIL),
-- with no server, since the format is a pure function of the agent.
local config = vim.json.decode(table.concat(vim.fn.readfile(_G.arg[1]), '\n'))
local ok, lines = pcall(function()
  local agents = require('forkyard.agents')
  return vim.tbl_map(agents.format, config.agents)
end)
local result = { ok = ok, lines = ok and lines or nil, error = not ok and tostring(lines) or nil }
vim.fn.writefile({ vim.json.encode(result) }, config.result)
vim.cmd(ok and 'qall!' or 'cquit!')
