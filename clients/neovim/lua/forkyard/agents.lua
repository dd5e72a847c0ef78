--- `:Forkyard agents`: a list buffer of the repository's agents (state, progress,
--- changes) that follows `forkyard/agent/changed`, with keys to review each agent; and
--- an agent's details (summary, error, log).
local actions = require('forkyard.actions')
local config = require('forkyard.config')

local M = {}

local ns = vim.api.nvim_create_namespace('forkyard_agents')

local STATE_HL = {
  queued = 'Comment',
  starting = 'DiagnosticInfo',
  running = 'DiagnosticInfo',
  done = 'DiagnosticOk',
  applied = 'DiagnosticHint',
  failed = 'DiagnosticError',
  cancelled = 'DiagnosticWarn',
  interrupted = 'DiagnosticWarn',
  discarded = 'Comment',
}

local HEADER_LINES = 2

---@type table<string, integer> root -> list buffer
local list_buffers = {}

local function plural(n, word)
  return ('%d %s%s'):format(n, word, n == 1 and '' or 's')
end

local function number_or_zero(v)
  return type(v) == 'number' and v or 0
end

--- 999, 1.2k, 12k, 1.2M: a token count that fits a line (as the VS Code Agents view).
function M.compact_count(n)
  if n < 1000 then
    return tostring(math.floor(n))
  end
  for _, unit in ipairs({ { 1e3, 'k' }, { 1e6, 'M' } }) do
    local value = n / unit[1]
    if value < 9.95 then
      return (('%.1f'):format(value):gsub('%.0$', '')) .. unit[2]
    end
    if value < 999.5 then
      return ('%d'):format(math.floor(value + 0.5)) .. unit[2]
    end
  end
  return ('%d'):format(math.floor(n / 1e9 + 0.5)) .. 'G'
end

local function dollars(cost)
  if cost == 0 then
    return '$0'
  elseif cost < 0.0001 then
    return '<$0.0001'
  elseif cost >= 1 then
    return ('$%.2f'):format(cost)
  end
  return '$' .. ('%.1g'):format(cost)
end

--- What an agent's model calls used: "1.2k tok · $0.003", "1.2k tok" when the price is
--- unknown (costUsd null), nil when nothing is known (no usage, or only zeros).
function M.usage_text(usage)
  if type(usage) ~= 'table' then
    return nil
  end
  local tokens = number_or_zero(usage.inputTokens) + number_or_zero(usage.outputTokens)
  local cost = type(usage.costUsd) == 'number' and usage.costUsd or nil
  if tokens == 0 and number_or_zero(usage.cachedTokens) == 0 and not (cost and cost > 0) then
    return nil
  end
  local text = M.compact_count(tokens) .. ' tok'
  return cost and (text .. ' · ' .. dollars(cost)) or text
end

--- `overlaps #2 #5`: other done agents changing the same lines (`agent.overlaps`), by
--- number when `numbers` (agent id -> number) knows them; nil when there are none.
---@param agent table
---@param numbers table<string, integer>?
function M.overlaps_text(agent, numbers)
  if type(agent.overlaps) ~= 'table' or #agent.overlaps == 0 then
    return nil
  end
  local names = {}
  for _, overlap in ipairs(agent.overlaps) do
    local number = numbers and numbers[overlap.agentId]
    table.insert(names, number and ('#' .. number) or tostring(overlap.agentId))
  end
  return 'overlaps ' .. table.concat(names, ' ')
end

--- One agent as one line of the list; its number comes first so keys can find it.
---@param numbers table<string, integer>? agent id -> number, to name overlapping agents
function M.format(agent, numbers)
  local changes = agent.changes or { files = 0, additions = 0, deletions = 0 }
  local progress = ''
  if type(agent.progress) == 'table' and agent.progress.message then
    progress = ' — ' .. agent.progress.message
    if type(agent.progress.percentage) == 'number' then
      progress = progress .. (' (%d%%)'):format(agent.progress.percentage)
    end
  end
  local usage = M.usage_text(agent.usage)
  if usage then
    progress = progress .. ' · ' .. usage
  end
  local title = (agent.title or agent.task or ''):gsub('\n', ' ')
  -- Before the title, which may be long: what needs a look before applying.
  local notes = {}
  local overlaps = M.overlaps_text(agent, numbers)
  if overlaps then
    table.insert(notes, overlaps)
  end
  if type(agent.check) == 'table' then
    table.insert(notes, agent.check.passed and 'check ok' or 'check FAILED')
  end
  local placement = agent.placement
  if type(placement) == 'table' and placement.kind == 'cluster' then
    local node = type(placement.node) == 'string' and placement.node or nil
    table.insert(notes, node and ('on ' .. node) or 'on the cluster')
  end
  if #notes > 0 then
    title = '[' .. table.concat(notes, ', ') .. '] ' .. title
  end
  return ('#%-3d %-11s %-8s %-8s %s +%d -%d  %s%s'):format(
    agent.number,
    agent.state,
    agent.role or '',
    agent.backend or '',
    plural(changes.files, 'file'),
    changes.additions,
    changes.deletions,
    title,
    progress
  )
end

local function help_line()
  local keys = config.options.agents_keys
  local parts = {}
  for _, item in ipairs({
    { 'diff', 'diff' },
    { 'apply', 'apply' },
    { 'discard', 'discard' },
    { 'cancel', 'cancel' },
    { 'follow_up', 'follow-up' },
    { 'details', 'details' },
    { 'refresh', 'refresh' },
    { 'close', 'close' },
  }) do
    if keys[item[1]] then
      table.insert(parts, keys[item[1]] .. ' ' .. item[2])
    end
  end
  return table.concat(parts, ' · ')
end

---@param session forkyard.Session
---@param buf integer
local function render(session, buf)
  if not vim.api.nvim_buf_is_valid(buf) then
    return
  end
  local agents = session:agent_list()
  local lines = {
    ('Forkyard agents — %s  (%s)'):format(vim.fs.basename(session.root), plural(#agents, 'agent')),
    help_line(),
  }
  local numbers = {}
  for _, agent in ipairs(agents) do
    numbers[agent.id] = agent.number
  end
  for _, agent in ipairs(agents) do
    table.insert(lines, M.format(agent, numbers))
  end
  if #agents == 0 then
    table.insert(lines, 'No agents yet: :Forkyard run <command> or :Forkyard dispatch <task>')
  end
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].modified = false
  vim.api.nvim_buf_clear_namespace(buf, ns, 0, -1)
  vim.api.nvim_buf_set_extmark(buf, ns, 0, 0, { end_col = #lines[1], hl_group = 'Title' })
  vim.api.nvim_buf_set_extmark(buf, ns, 1, 0, { end_col = #lines[2], hl_group = 'Comment' })
  for i, agent in ipairs(agents) do
    local row = HEADER_LINES + i - 1
    local start = lines[row + 1]:find(agent.state, 1, true)
    if start then
      vim.api.nvim_buf_set_extmark(buf, ns, row, start - 1, {
        end_col = start - 1 + #agent.state,
        hl_group = STATE_HL[agent.state] or 'Normal',
      })
    end
  end
end

--- The agent number on the cursor's line of a list buffer.
---@return string?
function M.agent_at_cursor()
  local line = vim.api.nvim_get_current_line()
  return line:match('^#(%d+)')
end

local function with_agent(fn)
  return function()
    local number = M.agent_at_cursor()
    if not number then
      require('forkyard.notice').show('Forkyard: put the cursor on an agent line', vim.log.levels.WARN)
      return
    end
    fn(number)
  end
end

---@param session forkyard.Session
---@param buf integer
local function keymaps(session, buf)
  local keys = config.options.agents_keys
  local bindings = {
    diff = with_agent(function(n)
      require('forkyard.diff').open(session, n)
    end),
    apply = with_agent(function(n)
      actions.apply(session, n)
    end),
    discard = with_agent(function(n)
      actions.discard(session, n)
    end),
    cancel = with_agent(function(n)
      actions.cancel(session, n)
    end),
    follow_up = with_agent(function(n)
      actions.ask_follow_up(session, n)
    end),
    details = with_agent(function(n)
      M.details(session, n)
    end),
    refresh = function()
      M.refresh(session)
    end,
    close = function()
      if #vim.api.nvim_list_wins() > 1 then
        vim.cmd('close')
      else
        vim.cmd('bwipeout')
      end
    end,
  }
  for name, fn in pairs(bindings) do
    if keys[name] then
      vim.keymap.set('n', keys[name], fn, { buffer = buf, nowait = true, desc = 'Forkyard: ' .. name })
    end
  end
end

--- Ask the server for the full list again (the buffer also follows notifications).
---@param session forkyard.Session
function M.refresh(session)
  session:request('forkyard/agent/list', vim.empty_dict(), function(err, result)
    if err then
      require('forkyard.notice').show('Forkyard: ' .. (err.message or 'cannot list agents'), vim.log.levels.ERROR)
      return
    end
    for _, agent in ipairs(result.agents or {}) do
      session:_set_agent(agent)
    end
    local buf = list_buffers[session.root]
    if buf then
      render(session, buf)
    end
  end)
end

--- Open the agents list of a session in a split below (or focus it).
---@param session forkyard.Session
---@return integer buf
function M.open(session)
  local buf = list_buffers[session.root]
  if not (buf and vim.api.nvim_buf_is_valid(buf)) then
    buf = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_buf_set_name(buf, 'forkyard://agents/' .. vim.fs.basename(session.root))
    vim.bo[buf].buftype = 'nofile'
    vim.bo[buf].bufhidden = 'hide'
    vim.bo[buf].swapfile = false
    vim.bo[buf].filetype = 'forkyard-agents'
    vim.b[buf].forkyard_root = session.root
    list_buffers[session.root] = buf
    keymaps(session, buf)
    session:on('agent', 'agents-list', function()
      render(session, buf)
    end)
    vim.api.nvim_create_autocmd('BufWipeout', {
      buffer = buf,
      callback = function()
        session:off('agent', 'agents-list')
        list_buffers[session.root] = nil
      end,
    })
  end
  render(session, buf)
  local wins = vim.fn.win_findbuf(buf)
  if #wins > 0 then
    vim.api.nvim_set_current_win(wins[1])
  else
    vim.cmd('botright split')
    vim.api.nvim_win_set_buf(0, buf)
    vim.api.nvim_win_set_height(0, math.min(15, math.max(5, vim.api.nvim_buf_line_count(buf) + 1)))
    vim.wo.wrap = false
    vim.wo.cursorline = true
  end
  if vim.api.nvim_buf_line_count(buf) > HEADER_LINES then
    vim.api.nvim_win_set_cursor(0, { HEADER_LINES + 1, 0 })
  end
  M.refresh(session)
  return buf
end

local function numbers_of(session)
  local numbers = {}
  for _, agent in ipairs(session:agent_list()) do
    numbers[agent.id] = agent.number
  end
  return numbers
end

local function check_text(check)
  if type(check) ~= 'table' then
    return '—'
  end
  local text = check.passed and 'passed' or 'failed'
  if type(check.summary) == 'string' and check.summary ~= '' then
    text = text .. ': ' .. (check.summary:gsub('\n', ' '))
  end
  return text
end

local function value(v)
  return (v == nil or v == vim.NIL) and '—' or tostring(v)
end

--- An agent's details and log (`forkyard/agent/read`) in a markdown buffer.
---@param session forkyard.Session
function M.details(session, ref)
  session:request('forkyard/agent/read', { agentId = actions.agent_ref(session, ref) }, function(err, result)
    if err then
      require('forkyard.notice').show('Forkyard: ' .. (err.message or 'cannot read the agent'), vim.log.levels.ERROR)
      return
    end
    local agent = result.agent
    local lines = {
      ('# agent #%d: %s'):format(agent.number, agent.title),
      '',
      ('- state: `%s`'):format(agent.state),
      ('- role: %s, backend: %s'):format(agent.role, agent.backend),
      ('- branch: %s'):format(value(agent.branch)),
      ('- worktree: %s'):format(value(agent.worktree)),
      ('- changes: %s +%d -%d'):format(
        plural(agent.changes.files, 'file'),
        agent.changes.additions,
        agent.changes.deletions
      ),
      ('- overlaps: %s'):format(M.overlaps_text(agent, numbers_of(session)) or 'none'),
      ('- check: %s'):format(check_text(agent.check)),
      '',
      '## Task',
      '',
    }
    vim.list_extend(lines, vim.split(agent.task or '', '\n', { plain = true }))
    for _, section in ipairs({ { 'Summary', agent.summary }, { 'Error', agent.error } }) do
      if section[2] and section[2] ~= vim.NIL and section[2] ~= '' then
        vim.list_extend(lines, { '', '## ' .. section[1], '' })
        vim.list_extend(lines, vim.split(section[2], '\n', { plain = true }))
      end
    end
    vim.list_extend(lines, { '', '## Log', '', '```' })
    for _, entry in ipairs(result.log or {}) do
      for i, text in ipairs(vim.split(entry.text or '', '\n', { plain = true })) do
        table.insert(lines, i == 1 and ('[%s] %s'):format(entry.kind, text) or text)
      end
    end
    table.insert(lines, '```')
    local name = ('forkyard://agent/%s/%d'):format(vim.fs.basename(session.root), agent.number)
    local buf = vim.fn.bufnr(name)
    if buf == -1 then
      buf = vim.api.nvim_create_buf(false, true)
      vim.api.nvim_buf_set_name(buf, name)
      vim.bo[buf].buftype = 'nofile'
      vim.bo[buf].bufhidden = 'wipe'
      vim.bo[buf].filetype = 'markdown'
      vim.b[buf].forkyard_root = session.root
      local close = config.options.agents_keys.close
      if close then
        vim.keymap.set('n', close, '<cmd>close<cr>', { buffer = buf, nowait = true })
      end
    end
    vim.bo[buf].modifiable = true
    vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
    vim.bo[buf].modifiable = false
    if #vim.fn.win_findbuf(buf) == 0 then
      vim.cmd('belowright split')
      vim.api.nvim_win_set_buf(0, buf)
    end
  end)
end

return M
