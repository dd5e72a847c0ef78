-- A repository whose .forkyard.toml sets a setup command: :checkhealth forkyard says it is
-- not trusted and which keys are ignored; `:Forkyard trust`; :checkhealth says trusted.
local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local c = H.config

local function health_lines()
  vim.cmd('checkhealth forkyard')
  local buf = vim.api.nvim_get_current_buf()
  local lines = H.lines(buf)
  vim.cmd('bwipeout! ' .. buf)
  return lines
end

H.run(function()
  H.capture_notifications()
  H.setup({})
  H.edit_attached(c.file)
  H.step('attached')
  H.result.before = health_lines()
  H.step('checkhealth untrusted')
  vim.cmd('Forkyard trust')
  H.wait_for('the server to say it trusts the repository', function()
    return H.notified('Forkyard trusts')
  end)
  H.step('trusted')
  H.result.after = health_lines()
  H.step('checkhealth trusted')
  vim.cmd('Forkyard trust --bogus')
  H.wait_for('the usage', function()
    return H.notified('usage: trust')
  end)
end)
