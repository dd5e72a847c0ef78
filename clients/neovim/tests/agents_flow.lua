-- setup() attaches to a repository buffer; :Forkyard run dispatches a command agent;
-- :Forkyard agents lists it and follows it to done (progress through LspProgress, the
-- end through vim.notify); :Forkyard diff opens its tab; :Forkyard apply changes the
-- buffer; :Forkyard chat with /agents shows the reply in the chat buffer.
local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local c = H.config

local function find_line(buf, pattern)
  for _, line in ipairs(H.lines(buf)) do
    if line:find(pattern) then
      return line
    end
  end
  return nil
end

H.run(function()
  H.capture_notifications()
  H.capture_progress()
  H.setup({ max_parallel_agents = 2, settings = { agent = { max_steps = 7 } } })
  local buf, client = H.edit_attached(c.file)
  H.result.root_dir = client.root_dir or client.config.root_dir
  H.result.init_options = client.config.init_options
  H.result.forkyard_capabilities = vim.tbl_get(client.config.capabilities or {}, 'experimental', 'forkyard')
  H.result.buffer_before = H.text(buf)
  H.step('attached')

  vim.cmd('Forkyard run ' .. c.task)
  local agent = H.wait_for('agent #1 to be known', function()
    return H.agent(1)
  end)
  H.result.dispatched = { backend = agent.backend, task = agent.task, role = agent.role }
  H.step('dispatched')

  vim.cmd('Forkyard agents')
  local list = vim.api.nvim_get_current_buf()
  H.result.list_name = vim.api.nvim_buf_get_name(list)
  H.result.list_line_at_open = find_line(list, '^#1 ')
  H.wait_agent_state(1, 'done')
  H.result.list_line_done = H.wait_for('the list to show #1 done', function()
    return find_line(list, '^#1%s+done')
  end)
  -- The details key on the agent's line: its task, summary and log.
  vim.api.nvim_win_set_cursor(0, { vim.fn.search('^#1 ', 'n'), 0 })
  vim.fn.maparg('<CR>', 'n', false, true).callback()
  local details = H.wait_for('the details buffer', function()
    local b = vim.fn.bufnr('forkyard://agent/' .. vim.fs.basename(c.repo) .. '/1')
    return b ~= -1 and find_line(b, '^## Log') and b
  end)
  H.result.details = H.lines(details)
  vim.cmd('close')
  H.result.completion_diff = vim.fn.getcompletion('Forkyard diff ', 'cmdline')
  H.result.completion_subcommands = vim.fn.getcompletion('Forkyard ', 'cmdline')
  H.step('done')

  H.result.done_notification = H.wait_for('the done notification', function()
    return H.notified('#1 done')
  end).message
  H.wait_for('the progress to end', function()
    for _, p in ipairs(H.result.progress) do
      if p.kind == 'end' then
        return true
      end
    end
  end)
  H.step('notified')

  local tabs_before = #vim.api.nvim_list_tabpages()
  vim.cmd('Forkyard diff 1')
  local diff_windows = H.wait_for('the diff tab with both sides', function()
    local tab = vim.api.nvim_get_current_tabpage()
    local ok, key = pcall(vim.api.nvim_tabpage_get_var, tab, 'forkyard_diff')
    if not ok or not key then
      return nil
    end
    local diffed = {}
    for _, win in ipairs(vim.api.nvim_tabpage_list_wins(tab)) do
      if vim.wo[win].diff then
        local b = vim.api.nvim_win_get_buf(win)
        table.insert(diffed, { name = vim.api.nvim_buf_get_name(b), text = H.text(b) })
      end
    end
    return #diffed == 2 and diffed
  end)
  H.result.tabs_before_diff = tabs_before
  H.result.tabs_with_diff = #vim.api.nvim_list_tabpages()
  H.result.diff_windows = diff_windows
  H.result.diff_list = H.lines(vim.fn.bufnr('forkyard://diff/' .. vim.fs.basename(c.repo) .. '/1'))
  vim.cmd('tabclose')
  H.step('diff')

  vim.cmd('Forkyard apply 1')
  H.wait_for('the agent change in the buffer', function()
    return H.text(buf) ~= H.result.buffer_before
  end)
  H.result.buffer_after_apply = H.text(buf)
  H.result.modified_after_apply = vim.bo[buf].modified
  H.wait_agent_state(1, 'applied')
  H.result.apply_notification = H.wait_for('the apply notification', function()
    return H.notified('agent #1 applied')
  end).message
  H.step('applied')

  vim.cmd('Forkyard chat')
  local view = require('forkyard.chat').view_of(0)
  H.result.chat_filetype = vim.bo[view.transcript].filetype
  H.result.chat_current_is_prompt = vim.api.nvim_get_current_buf() == view.prompt
  vim.api.nvim_buf_set_lines(view.prompt, 0, -1, false, { '/agents' })
  vim.fn.maparg('<CR>', 'n', false, true).callback()
  H.result.prompt_after_send = H.lines(view.prompt)
  H.wait_for('the /agents reply in the chat', function()
    return find_line(view.transcript, '#1.*applied')
  end)
  H.wait_for('the turn to complete', function()
    local thread = view:thread()
    return thread and thread.turn and thread.turn.state == 'completed'
  end)
  H.result.chat_lines = H.lines(view.transcript)
  H.step('chat')
end)
