-- :checkhealth forkyard with the server, bubblewrap and a model (a fake server on
-- 127.0.0.1) in place: the health buffer's text goes to the result.
local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local c = H.config

H.run(function()
  H.setup({ models = { default = { provider = 'openai', base_url = c.model_url, model = 'fake-model' } } })
  H.edit_attached(c.file)
  H.step('attached')
  vim.cmd('checkhealth forkyard')
  local buf = vim.api.nvim_get_current_buf()
  H.result.health_filetype = vim.bo[buf].filetype
  H.result.health = H.lines(buf)
  H.step('checkhealth')
end)
