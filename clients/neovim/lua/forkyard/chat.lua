--- The chat: a markdown transcript of one thread, updated as the server streams, and a
--- prompt window below it. Sending never waits for the reply: the request returns at
--- once and the reply arrives as notifications, so you can keep typing (a message sent
--- while a turn runs is queued by the server).
local config = require('forkyard.config')

local M = {}

local COMMANDS = {
  { word = '/dispatch', menu = '[--role R] [--n K] <task>' },
  { word = '/run', menu = '<shell command>' },
  { word = '/agents', menu = 'list agents' },
  { word = '/status', menu = '<n>' },
  { word = '/diff', menu = '<n>' },
  { word = '/apply', menu = '<n> [m ...] (in order)' },
  { word = '/rebase', menu = '<n> (onto your checkout)' },
  { word = '/discard', menu = '<n>' },
  { word = '/cancel', menu = '<n>' },
  { word = '/help', menu = 'the commands' },
}

---@class forkyard.ChatView
---@field session forkyard.Session
---@field thread_id string?
---@field transcript integer buffer
---@field prompt integer buffer
---@field spans {first: integer, last: integer}[] lines of each entry (0-based, end exclusive)
---@field first_send_pending boolean
---@field queued string[]
---@field context table?
local View = {}
View.__index = View

---@type forkyard.ChatView[]
local views = {}
local counter = 0
local token_counter = 0

local function set_lines(buf, first, last, lines)
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, first, last, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].modified = false
end

local function split_text(text)
  return vim.split(text or '', '\n', { plain = true })
end

--- How an assistant reply's turn ended, when that is worth a line under it.
---@param thread forkyard.Thread
---@param entry forkyard.ThreadEntry
local function turn_note(thread, entry)
  local turn = entry.role == 'assistant' and entry.turn_id and thread.turn_states[entry.turn_id]
  if not turn then
    return nil
  end
  if turn.state == 'interrupted' then
    return '_(interrupted)_'
  elseif turn.state == 'failed' and vim.trim(entry.text) == '' then
    return '> **The turn failed:** ' .. (turn.error or 'no reason given')
  end
  return nil
end

--- The markdown lines of one message.
---@param thread forkyard.Thread
---@param entry forkyard.ThreadEntry
local function entry_lines(thread, entry)
  local lines = {}
  if entry.role == 'event' then
    for _, line in ipairs(split_text(entry.text)) do
      table.insert(lines, line == '' and '>' or '> ' .. line)
    end
  else
    table.insert(lines, entry.role == 'user' and '### You' or '### Forkyard')
    table.insert(lines, '')
    vim.list_extend(lines, split_text(entry.text))
    local note = turn_note(thread, entry)
    if note then
      vim.list_extend(lines, { '', note })
    end
  end
  table.insert(lines, '')
  return lines
end

--- What an entry's lines depend on, to tell whether they must be drawn again.
local function drawn(thread, entry)
  return entry.text .. '\0' .. (turn_note(thread, entry) or '')
end

local TURN_FOOTER = {
  queued = '_queued…_',
  running = '_thinking…_',
}

--- A line at the end while the latest turn waits or runs.
---@param thread forkyard.Thread?
local function footer_lines(thread)
  local text = thread and thread.turn and TURN_FOOTER[thread.turn.state]
  return text and { text } or {}
end

local function new_buffer(name, filetype, root)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_name(buf, name)
  vim.bo[buf].buftype = 'nofile'
  vim.bo[buf].bufhidden = 'hide'
  vim.bo[buf].swapfile = false
  vim.bo[buf].filetype = filetype
  vim.b[buf].forkyard_root = root
  return buf
end

---@param session forkyard.Session
---@param thread_id string?
---@return forkyard.ChatView
function View.new(session, thread_id)
  counter = counter + 1
  local repo = vim.fs.basename(session.root)
  local self = setmetatable({
    session = session,
    thread_id = thread_id,
    spans = {},
    first_send_pending = false,
    queued = {},
    context = nil,
  }, View)
  self.transcript = new_buffer(('forkyard://chat/%s/%d'):format(repo, counter), 'markdown', session.root)
  self.prompt = new_buffer(('forkyard://chat/%s/%d/prompt'):format(repo, counter), 'markdown', session.root)
  vim.bo[self.transcript].modifiable = false
  vim.b[self.transcript].forkyard_chat = counter
  vim.b[self.prompt].forkyard_chat = counter
  vim.bo[self.prompt].omnifunc = "v:lua.require'forkyard.chat'.omnifunc"
  self:_keymaps()
  session:on('thread', self, function(id)
    if id == self.thread_id then
      self:render()
    end
  end)
  local group = vim.api.nvim_create_augroup('forkyard_chat_' .. counter, { clear = true })
  vim.api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = self.transcript,
    callback = function()
      self:close()
    end,
  })
  table.insert(views, self)
  self:render()
  return self
end

function View:_keymaps()
  local keys = config.options.chat_keys
  local function map(mode, lhs, fn, buf, desc)
    if lhs then
      vim.keymap.set(mode, lhs, fn, { buffer = buf, nowait = true, desc = desc })
    end
  end
  map('n', keys.send, function()
    self:send_prompt()
  end, self.prompt, 'Forkyard: send')
  map('i', keys.send_insert, function()
    self:send_prompt()
  end, self.prompt, 'Forkyard: send')
  for _, buf in ipairs({ self.prompt, self.transcript }) do
    map('n', keys.stop, function()
      self:stop()
    end, buf, 'Forkyard: interrupt the reply')
    map('n', keys.close, function()
      self:hide()
    end, buf, 'Forkyard: close the chat')
  end
end

function View:thread()
  return self.thread_id and self.session.threads[self.thread_id] or nil
end

--- Redraw the transcript; only the entries from the first that changed are rewritten,
--- so a streaming reply costs the lines of that reply, not the whole thread.
function View:render()
  local buf = self.transcript
  if not vim.api.nvim_buf_is_valid(buf) then
    return
  end
  local thread = self:thread()
  local title = (thread and thread.title)
    or (self.thread_id and 'Forkyard chat')
    or 'Forkyard chat (new thread)'
  local header = { '# ' .. title, '' }
  local entries = thread and thread.entries or {}
  local from = 1
  if self.drawn_title == title then
    -- Entries before the first one that differs from what was drawn stay as they are.
    while
      from <= #entries
      and self.spans[from]
      and self.spans[from].id == entries[from].id
      and self.spans[from].drawn == drawn(thread, entries[from])
    do
      from = from + 1
    end
  end
  self.drawn_title = title
  local first_line = from == 1 and 0 or self.spans[from - 1].last
  local lines = {}
  if from == 1 then
    vim.list_extend(lines, header)
  end
  local line = first_line + #lines
  for i = from, #entries do
    local entry_text = entry_lines(thread, entries[i])
    self.spans[i] =
      { first = line, last = line + #entry_text, id = entries[i].id, drawn = drawn(thread, entries[i]) }
    line = line + #entry_text
    vim.list_extend(lines, entry_text)
  end
  for i = #entries + 1, #self.spans do
    self.spans[i] = nil
  end
  vim.list_extend(lines, footer_lines(thread))
  local followers = self:_followers()
  set_lines(buf, first_line, -1, lines)
  vim.b[buf].forkyard_thread = self.thread_id
  local last = vim.api.nvim_buf_line_count(buf)
  for _, win in ipairs(followers) do
    vim.api.nvim_win_set_cursor(win, { last, 0 })
  end
end

--- The transcript windows that should keep showing the end as text arrives: all but
--- the one where the user moved the cursor up to read.
function View:_followers()
  local last = vim.api.nvim_buf_line_count(self.transcript)
  return vim.tbl_filter(function(win)
    return win ~= vim.api.nvim_get_current_win() or vim.api.nvim_win_get_cursor(win)[1] >= last
  end, vim.fn.win_findbuf(self.transcript))
end

function View:_scroll_to_end()
  local last = vim.api.nvim_buf_line_count(self.transcript)
  for _, win in ipairs(vim.fn.win_findbuf(self.transcript)) do
    vim.api.nvim_win_set_cursor(win, { last, 0 })
  end
end

--- The text of the prompt window goes to the server; the prompt empties at once.
function View:send_prompt()
  local lines = vim.api.nvim_buf_get_lines(self.prompt, 0, -1, false)
  local text = vim.trim(table.concat(lines, '\n'))
  if text == '' then
    return
  end
  vim.api.nvim_buf_set_lines(self.prompt, 0, -1, false, {})
  self:send(text)
end

---@param text string
function View:send(text)
  if self.first_send_pending then
    -- The thread is created by the first message; later ones wait for its id.
    table.insert(self.queued, text)
    return
  end
  token_counter = token_counter + 1
  local params = {
    text = text,
    threadId = self.thread_id,
    workDoneToken = ('forkyard/chat/%d'):format(token_counter),
    context = self.context,
  }
  self.context = nil
  self.first_send_pending = self.thread_id == nil
  self.session:request('forkyard/chat', params, function(err, result)
    self.first_send_pending = false
    if err then
      require('forkyard.notice').show('Forkyard chat: ' .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    elseif result and not self.thread_id then
      self.thread_id = result.threadId
      self.session.last_thread_id = result.threadId
      self.session:load_thread(result.threadId, function() end)
      self:render()
    end
    local queued = self.queued
    self.queued = {}
    for _, later in ipairs(queued) do
      self:send(later)
    end
  end)
end

function View:stop()
  if not self.thread_id then
    return
  end
  self.session:request('forkyard/chat/interrupt', { threadId = self.thread_id }, function(err)
    if err then
      require('forkyard.notice').show('Forkyard: ' .. (err.message or 'cannot interrupt'), vim.log.levels.WARN)
    end
  end)
end

--- Show the transcript with the prompt below it, per `chat.position`; focus the prompt.
function View:show()
  local prompt_wins = vim.fn.win_findbuf(self.prompt)
  if #prompt_wins > 0 then
    vim.api.nvim_set_current_win(prompt_wins[1])
    return
  end
  local opts = config.options.chat
  local position = opts.position
  if position == 'tab' then
    vim.cmd('tabnew')
  elseif position == 'right' or position == 'left' then
    vim.cmd((position == 'right' and 'botright' or 'topleft') .. ' vsplit')
    vim.api.nvim_win_set_width(0, opts.width)
  elseif position == 'below' or position == 'above' then
    vim.cmd((position == 'below' and 'botright' or 'topleft') .. ' split')
    vim.api.nvim_win_set_height(0, opts.height)
  end
  local transcript_win = vim.api.nvim_get_current_win()
  vim.api.nvim_win_set_buf(transcript_win, self.transcript)
  vim.wo[transcript_win].wrap = true
  vim.wo[transcript_win].linebreak = true
  vim.wo[transcript_win].conceallevel = 2
  vim.cmd('belowright split')
  local prompt_win = vim.api.nvim_get_current_win()
  vim.api.nvim_win_set_buf(prompt_win, self.prompt)
  vim.api.nvim_win_set_height(prompt_win, opts.prompt_height)
  vim.wo[prompt_win].winfixheight = true
  vim.wo[prompt_win].wrap = true
  vim.wo[prompt_win].winbar = self.context and '%#Comment#Send: <CR> (normal), <C-s> (insert)  with context'
    or '%#Comment#Send: <CR> (normal), <C-s> (insert)   /help for commands'
  self:_scroll_to_end()
end

function View:hide()
  for _, buf in ipairs({ self.prompt, self.transcript }) do
    for _, win in ipairs(vim.fn.win_findbuf(buf)) do
      if #vim.api.nvim_list_wins() > 1 then
        vim.api.nvim_win_close(win, false)
      end
    end
  end
end

function View:close()
  self.session:off('thread', self)
  for i, view in ipairs(views) do
    if view == self then
      table.remove(views, i)
      break
    end
  end
  if vim.api.nvim_buf_is_valid(self.prompt) then
    vim.api.nvim_buf_delete(self.prompt, { force = true })
  end
end

-- --- module functions ------------------------------------------------------------------

--- The chat view of the current buffer, if it is one.
---@return forkyard.ChatView?
function M.view_of(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  for _, view in ipairs(views) do
    if view.transcript == bufnr or view.prompt == bufnr then
      return view
    end
  end
  return nil
end

--- The most recent chat view of a session.
---@param session forkyard.Session
---@return forkyard.ChatView?
function M.last_view(session)
  for i = #views, 1, -1 do
    if views[i].session == session then
      return views[i]
    end
  end
  return nil
end

--- Open the chat: `thread` nil reopens the last one of this repository (or starts a
--- thread), "new" starts one, anything else is a thread id.
---@param session forkyard.Session
---@param thread string?
---@param context table? {uri, range?} sent with the first message
---@return forkyard.ChatView
function M.open(session, thread, context)
  local view
  if thread == nil or thread == '' then
    view = M.last_view(session)
    if not view and session.last_thread_id then
      thread = session.last_thread_id
    end
  elseif thread ~= 'new' then
    for _, v in ipairs(views) do
      if v.session == session and v.thread_id == thread then
        view = v
      end
    end
  end
  if not view then
    view = View.new(session, (thread ~= 'new' and thread ~= '') and thread or nil)
    if view.thread_id then
      session:load_thread(view.thread_id, function(err)
        if err then
          require('forkyard.notice').show('Forkyard: ' .. (err.message or 'cannot read the thread'), vim.log.levels.ERROR)
        end
      end)
    end
  end
  view.context = context or view.context
  view:show()
  return view
end

--- Interrupt the reply of the current chat (or the repository's last one).
---@param session forkyard.Session
function M.stop(session)
  local view = M.view_of(0) or M.last_view(session)
  if view then
    view:stop()
  elseif session.last_thread_id then
    session:request('forkyard/chat/interrupt', { threadId = session.last_thread_id })
  else
    require('forkyard.notice').show('Forkyard: no chat to stop', vim.log.levels.WARN)
  end
end

--- Completion of slash commands in the prompt (`<C-x><C-o>`).
function M.omnifunc(findstart, base)
  if findstart == 1 then
    local before = vim.api.nvim_get_current_line():sub(1, vim.fn.col('.') - 1)
    local start = before:find('/%w*$')
    return start and start - 1 or -3
  end
  return vim.tbl_filter(function(item)
    return vim.startswith(item.word, base)
  end, COMMANDS)
end

--- Thread ids known to this session, for command completion.
---@param session forkyard.Session
function M.thread_ids(session)
  return vim.tbl_keys(session.threads)
end

M.View = View
return M
