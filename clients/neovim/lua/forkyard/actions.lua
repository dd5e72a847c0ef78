--- What the user can do to agents, shared by `:Forkyard`, the agents list and the diff
--- view. Every action is one request; its outcome is told with `vim.notify`.
local M = {}

local function notify(text, level)
  require('forkyard.notice').show('Forkyard: ' .. text, level)
end

local function failed(what, err)
  notify(what .. ': ' .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
end

--- The id to send for what a person typed ("3", "#3", an id); the server also takes
--- numbers as strings, so an agent this session has not heard of yet still works.
---@param session forkyard.Session
local function agent_ref(session, ref)
  local agent = session:agent(ref)
  return agent and agent.id or (tostring(ref):gsub('^#', ''))
end
M.agent_ref = agent_ref

local function label(agent)
  return ('agent #%d (%s)'):format(agent.number, agent.title)
end

--- Start an agent. `opts`: role, backend, title, threadId.
---@param session forkyard.Session
---@param task string
---@param opts table?
---@param callback fun(agent: table?)?
function M.dispatch(session, task, opts, callback)
  opts = opts or {}
  local params =
    { task = task, role = opts.role, backend = opts.backend, title = opts.title, threadId = opts.threadId }
  session:request('forkyard/agent/dispatch', params, function(err, result)
    if err then
      failed('dispatch', err)
      return callback and callback(nil)
    end
    session:_set_agent(result.agent)
    notify(('%s %s'):format(label(result.agent), result.agent.state))
    if callback then
      callback(result.agent)
    end
  end)
end

--- A shell command as a background agent (the `command` backend: no model needed).
function M.run(session, command, callback)
  M.dispatch(session, command, { backend = 'command' }, callback)
end

--- Apply an agent's changes (all, or `paths`, repo-relative) through the editor.
---@param session forkyard.Session
---@param ref string
---@param paths string[]?
function M.apply(session, ref, paths, callback)
  local params = { agentId = agent_ref(session, ref), paths = paths }
  session:request('forkyard/agent/apply', params, function(err, result)
    if err then
      failed('apply', err)
      return callback and callback(nil)
    end
    local conflicts = result.conflicts or {}
    if not result.applied then
      notify(('agent #%s was not applied (the edit was refused)'):format(ref), vim.log.levels.WARN)
    elseif #conflicts > 0 then
      local lines = {}
      for _, conflict in ipairs(conflicts) do
        table.insert(lines, ('  %s: %s'):format(conflict.path, conflict.reason))
      end
      notify(
        ('agent #%s applied to %s; not applied:\n%s'):format(
          ref,
          table.concat(result.paths, ', '),
          table.concat(lines, '\n')
        ),
        vim.log.levels.WARN
      )
    else
      local where = #result.paths > 0 and table.concat(result.paths, ', ') or 'nothing to change'
      notify(('agent #%s applied: %s (unsaved: :wall writes)'):format(ref, where))
    end
    if callback then
      callback(result)
    end
  end)
end

--- `quiet`: the server tells the outcome itself (a cancelled agent is announced with
--- `window/showMessage`), so saying it again would only repeat it.
local function agent_request(method, verb, quiet)
  return function(session, ref, callback)
    session:request(method, { agentId = agent_ref(session, ref) }, function(err, result)
      if err then
        failed(verb, err)
        return callback and callback(nil)
      end
      session:_set_agent(result.agent)
      if not quiet then
        notify(('%s %s'):format(label(result.agent), result.agent.state))
      end
      if callback then
        callback(result.agent)
      end
    end)
  end
end

M.discard = agent_request('forkyard/agent/discard', 'discard', false)
M.cancel = agent_request('forkyard/agent/cancel', 'cancel', true)

--- A follow-up instruction: a running agent gets it at its next step, a finished one
--- runs again in its worktree.
function M.message(session, ref, text, callback)
  session:request(
    'forkyard/agent/message',
    { agentId = agent_ref(session, ref), text = text },
    function(err, result)
      if err then
        failed('follow-up', err)
        return callback and callback(nil)
      end
      session:_set_agent(result.agent)
      notify(('%s got the follow-up (%s)'):format(label(result.agent), result.agent.state))
      if callback then
        callback(result.agent)
      end
    end
  )
end

--- Ask for a follow-up with `vim.ui.input`, then send it.
function M.ask_follow_up(session, ref)
  vim.ui.input({ prompt = ('Follow-up for agent #%s: '):format(ref) }, function(text)
    if text and vim.trim(text) ~= '' then
      M.message(session, ref, text)
    end
  end)
end

return M
