-- Review with Neovim's own tools: a done agent's hunks show as vim.diagnostic hints, the
-- stock vim.lsp.buf.code_action{apply=true} applies one hunk into the buffer; then
-- :Forkyard discard clears the rest, :Forkyard cancel stops a running agent, and
-- :Forkyard follow runs it again.
local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local c = H.config

H.run(function()
  H.capture_notifications()
  H.capture_progress()
  H.setup()
  local buf = H.edit_attached(c.file)
  H.result.buffer_before = H.text(buf)
  H.step('attached')

  vim.cmd('Forkyard run ' .. c.task)
  local hints = H.wait_for('the agent hints', function()
    local found = H.forkyard_diagnostics(buf)
    return #found == c.expected_hunks and found
  end)
  H.result.hint_lines = vim.tbl_map(function(d)
    return d.lnum
  end, hints)
  H.result.hint_messages = vim.tbl_map(function(d)
    return d.message
  end, hints)
  H.step('hints')

  vim.api.nvim_win_set_cursor(0, { hints[1].lnum + 1, 0 })
  local titles = {}
  vim.lsp.buf.code_action({
    apply = true,
    filter = function(action)
      table.insert(titles, action.title)
      return action.title:match('^Apply hunk') ~= nil
    end,
  })
  H.wait_for('the hunk in the buffer', function()
    return H.text(buf) ~= H.result.buffer_before
  end)
  H.result.action_titles = titles
  H.result.buffer_after_hunk = H.text(buf)
  H.result.hints_after_hunk = vim.tbl_map(
    function(d)
      return d.lnum
    end,
    H.wait_for('one hint fewer', function()
      local found = H.forkyard_diagnostics(buf)
      return #found == c.expected_hunks - 1 and found
    end)
  )
  H.step('hunk applied')

  vim.cmd('Forkyard discard 1')
  H.wait_agent_state(1, 'discarded')
  H.wait_for('the hints to clear', function()
    return #H.forkyard_diagnostics(buf) == 0
  end)
  H.result.buffer_after_discard = H.text(buf)
  H.step('discarded')

  vim.cmd('Forkyard run ' .. c.slow_task)
  H.wait_agent_state(2, 'running')
  H.result.cancel_completion = vim.fn.getcompletion('Forkyard cancel ', 'cmdline')
  vim.cmd('Forkyard cancel 2')
  local cancelled = H.wait_agent_state(2, 'cancelled')
  H.result.cancelled_state = cancelled.state
  H.wait_for('the progress of #2 to end', function()
    for _, p in ipairs(H.result.progress) do
      if p.kind == 'end' and p.message == 'cancelled' then
        return true
      end
    end
  end)
  H.step('cancelled')

  -- A follow-up to the cancelled agent runs again in its worktree.
  vim.cmd('Forkyard follow 2 echo hi > hi.txt')
  H.wait_for('agent #2 to run again', function()
    return H.agent(2).state ~= 'cancelled'
  end)
  local again = H.wait_agent_state(2, { 'done', 'failed' })
  H.result.follow_up = { state = again.state, changes = again.changes }
  H.result.apply_file_completion = vim.fn.getcompletion('Forkyard apply 2 ', 'cmdline')
  H.step('followed up')
end)
