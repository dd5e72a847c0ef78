-- ask_on_done: a done agent's forkyard/notice asks "Show diff / Apply / Discard" with
-- vim.ui.select (stubbed here to pick an action, as a user would), and the choice acts on
-- the agent the notice named: Apply changes the buffer, and the agent becomes applied.
local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local c = H.config

H.run(function()
  H.capture_notifications()
  H.result.asked = {}
  vim.ui.select = function(items, opts, on_choice)
    table.insert(H.result.asked, { items = items, prompt = opts.prompt, kind = opts.kind })
    on_choice(c.choice)
  end
  H.setup({ ask_on_done = true, notify_on_done = false })
  local buf = H.edit_attached(c.file)
  H.result.buffer_before = H.text(buf)
  H.step('attached')

  vim.cmd('Forkyard run ' .. c.task)
  H.wait_agent_state(1, c.final_state)
  H.result.state = H.agent(1).state
  H.wait_for('the choice to be told', function()
    return H.notified('agent #1')
  end)
  H.result.buffer_after = H.text(buf)
  H.step('acted')
end)
