--- The threads a session heard of, as the chat shows them: messages in order, a reply
--- growing with each delta until its final message replaces it, and each turn's state.
--- Pure data: the session feeds it notifications and tells the views.
local M = {}

---@class forkyard.ThreadEntry
---@field id string
---@field role "user"|"assistant"|"event"
---@field text string
---@field agent_id string?
---@field streaming boolean
---@field turn_id string?

---@class forkyard.Thread
---@field id string
---@field title string?
---@field entries forkyard.ThreadEntry[]
---@field by_id table<string, forkyard.ThreadEntry>
---@field turn {id: string, state: string, error: string?}? the latest turn
---@field turn_states table<string, {state: string, error: string?}> turn id -> state

---@param threads table<string, forkyard.Thread>
---@param thread_id string
---@return forkyard.Thread
function M.get(threads, thread_id)
  local thread = threads[thread_id]
  if not thread then
    thread = { id = thread_id, entries = {}, by_id = {}, turn = nil, turn_states = {} }
    threads[thread_id] = thread
  end
  return thread
end

local function add_entry(thread, message, streaming)
  local entry = {
    id = message.id,
    role = message.role,
    text = message.text or '',
    agent_id = message.agentId ~= vim.NIL and message.agentId or nil,
    turn_id = message.turnId ~= vim.NIL and message.turnId or nil,
    streaming = streaming,
  }
  table.insert(thread.entries, entry)
  thread.by_id[entry.id] = entry
  return entry
end

--- `forkyard/chat/delta`: a piece of a reply.
---@return forkyard.Thread, forkyard.ThreadEntry
function M.delta(threads, params)
  local thread = M.get(threads, params.threadId)
  local entry = thread.by_id[params.messageId]
  if entry then
    entry.text = entry.text .. params.delta
  else
    entry = add_entry(
      thread,
      { id = params.messageId, role = 'assistant', text = params.delta, turnId = params.turnId },
      true
    )
  end
  return thread, entry
end

--- `forkyard/chat/message`: a complete message (the user's, a reply, an agent event).
---@return forkyard.Thread, forkyard.ThreadEntry
function M.message(threads, message)
  local thread = M.get(threads, message.threadId)
  local entry = thread.by_id[message.id]
  if entry then
    entry.text, entry.streaming = message.text, false
  else
    entry = add_entry(thread, message, false)
  end
  return thread, entry
end

--- `forkyard/chat/turn`: a turn changed state.
---@return forkyard.Thread
function M.turn(threads, params)
  local thread = M.get(threads, params.threadId)
  local error_text = params.error ~= vim.NIL and params.error or nil
  thread.turn = { id = params.turnId, state = params.state, error = error_text }
  thread.turn_states[params.turnId] = thread.turn
  return thread
end

--- A `forkyard/thread/read` result, merged with what streamed meanwhile (a reply still
--- being written is not stored yet).
---@return forkyard.Thread
function M.merge_stored(threads, thread_id, result)
  local thread = M.get(threads, thread_id)
  thread.title = result.thread and result.thread.title or thread.title
  local streamed = thread.entries
  thread.entries, thread.by_id = {}, {}
  for _, message in ipairs(result.messages or {}) do
    add_entry(thread, message, false)
  end
  for _, entry in ipairs(streamed) do
    local stored = thread.by_id[entry.id]
    if not stored then
      table.insert(thread.entries, entry)
      thread.by_id[entry.id] = entry
    elseif entry.streaming and #entry.text > #stored.text then
      stored.text, stored.streaming = entry.text, true
    end
  end
  return thread
end

return M
