-- The chat with a model (a fake OpenAI-compatible server on 127.0.0.1, configured through
-- setup{models=...}): the reply streams into the chat buffer; :Forkyard stop interrupts a
-- reply; :Forkyard dispatch --role explorer starts an llm agent whose events appear inline.
local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local c = H.config

local function turn_state(view)
  local thread = view:thread()
  return thread and thread.turn and thread.turn.state
end

local function has_line(buf, pattern)
  for _, line in ipairs(H.lines(buf)) do
    if line:find(pattern) then
      return true
    end
  end
  return false
end

H.run(function()
  H.capture_notifications()
  H.setup({
    models = {
      default = { provider = 'openai', base_url = c.model_url, model = 'fake-model', timeout_seconds = 10 },
    },
  })
  H.edit_attached(c.file)
  H.step('attached')

  vim.cmd('Forkyard chat')
  local view = require('forkyard.chat').view_of(0)
  local snapshots = {}
  local render = view.render
  view.render = function(self)
    render(self)
    table.insert(snapshots, H.text(self.transcript))
  end

  view:send('Say hello')
  H.wait_for('the reply to complete', function()
    return turn_state(view) == 'completed'
  end)
  H.result.reply_lines = H.lines(view.transcript)
  H.result.snapshots = snapshots
  H.step('streamed')

  view:send('Count slowly')
  H.wait_for('the held reply to start streaming', function()
    return has_line(view.transcript, '^one')
  end)
  vim.cmd('Forkyard stop')
  H.wait_for('the turn to be interrupted', function()
    return turn_state(view) == 'interrupted'
  end)
  H.result.interrupted_lines = H.lines(view.transcript)
  H.step('interrupted')

  -- A question about the lines selected in a file window: they go along as context.
  vim.cmd('wincmd t')
  vim.cmd('2,2Forkyard chat')
  view:send('What does this line do?')
  H.wait_for('the answer about the selection', function()
    return turn_state(view) == 'completed' and has_line(view.transcript, 'It returns the greeting')
  end)
  H.step('context')

  -- From a file window, as a user would type it.
  vim.cmd('wincmd t')
  vim.cmd('Forkyard dispatch --role explorer Find the greeting')
  local agent = H.wait_agent_state(1, { 'done', 'failed' })
  H.result.explorer = {
    role = agent.role,
    backend = agent.backend,
    state = agent.state,
    task = agent.task,
    summary = agent.summary,
    error = agent.error,
  }
  H.wait_for('the agent events in the chat', function()
    return has_line(view.transcript, '^> agent #1 .* is done')
  end)
  H.result.final_lines = H.lines(view.transcript)
  H.step('dispatched')
end)
