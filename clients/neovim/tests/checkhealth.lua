-- :checkhealth forkyard with the server, bubblewrap and a model (a fake server on
-- 127.0.0.1) in place: the health buffer's text goes to the result. Then :help.
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

  -- The help file, as a plugin manager installs it: tags generated, then :help finds it.
  vim.opt.rtp:append(c.help_dir)
  vim.cmd.helptags(vim.fn.fnameescape(c.help_dir .. '/doc'))
  H.result.help = {}
  for _, tag in ipairs(c.help_tags) do
    vim.cmd.help(tag)
    H.result.help[tag] = {
      file = vim.fs.basename(vim.api.nvim_buf_get_name(0)),
      line = vim.api.nvim_get_current_line(),
    }
  end
  H.step('help')
end)
