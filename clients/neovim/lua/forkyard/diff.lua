--- `:Forkyard diff <n>`: a tab per agent. On the left the list of changed files; for
--- the selected file a diff split: your file (the real buffer, so `do`/`dp` and your own
--- edits work) against the agent's version (`forkyard/agent/file`, read-only).
local actions = require('forkyard.actions')
local config = require('forkyard.config')

local M = {}

local STATUS_LETTER = { added = 'A', modified = 'M', deleted = 'D', renamed = 'R' }
local LIST_WIDTH = 32
local LIST_HEADER_LINES = 2

---@class forkyard.DiffTab
---@field session forkyard.Session
---@field agent table
---@field files table[] FileChange[]
---@field tab integer
---@field list_win integer
---@field list_buf integer
---@field user_win integer
---@field agent_win integer
---@field index integer
---@field seq integer  bumped per shown file, so a late answer for another file is dropped

---@type table<string, forkyard.DiffTab>
local tabs = {}

local function tab_key(session, agent)
  return session.root .. '#' .. agent.number
end

local function text_lines(text)
  if text == nil or text == vim.NIL then
    return {}
  end
  local lines = vim.split(text, '\n', { plain = true })
  if lines[#lines] == '' then
    table.remove(lines)
  end
  return lines
end

--- A read-only scratch buffer with `lines`, named `name` (reused if it exists).
local function scratch(name, lines, path)
  local buf = vim.fn.bufnr(name)
  if buf == -1 then
    buf = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_buf_set_name(buf, name)
    vim.bo[buf].buftype = 'nofile'
    vim.bo[buf].bufhidden = 'hide'
    vim.bo[buf].swapfile = false
  end
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].modified = false
  local filetype = path and vim.filetype.match({ filename = path, buf = buf })
  if filetype then
    vim.bo[buf].filetype = filetype
  end
  return buf
end

--- Your side of a file: its buffer (loaded if needed), or an empty scratch when the
--- file does not exist in your checkout (the agent added it).
local function user_buffer(state, file)
  local path = file.status == 'renamed' and file.oldPath ~= vim.NIL and file.oldPath or file.path
  local absolute = vim.fs.joinpath(state.session.root, path)
  local existing = vim.fn.bufnr(absolute)
  if existing ~= -1 or vim.uv.fs_stat(absolute) then
    local buf = existing ~= -1 and existing or vim.fn.bufadd(absolute)
    vim.fn.bufload(buf)
    vim.bo[buf].buflisted = true
    return buf
  end
  return scratch(('forkyard://base/%d/%s'):format(state.agent.number, path), {}, path)
end

local function set_diff(win, on)
  if vim.api.nvim_win_is_valid(win) then
    vim.api.nvim_win_call(win, function()
      vim.cmd(on and 'diffthis' or 'diffoff')
    end)
  end
end

local function render_list(state)
  local agent = state.agent
  local lines = {
    ('agent #%d: %s'):format(agent.number, agent.title),
    ('%d file(s) +%d -%d'):format(agent.changes.files, agent.changes.additions, agent.changes.deletions),
  }
  for i, file in ipairs(state.files) do
    local marker = i == state.index and '>' or ' '
    table.insert(
      lines,
      ('%s%s %s +%d -%d'):format(
        marker,
        STATUS_LETTER[file.status] or '?',
        file.path,
        file.additions,
        file.deletions
      )
    )
  end
  local buf = state.list_buf
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].modified = false
end

--- Show file `index` of the agent in the diff split.
---@param state forkyard.DiffTab
function M.show_file(state, index)
  if index < 1 or index > #state.files then
    return
  end
  state.index = index
  state.seq = state.seq + 1
  local seq = state.seq
  local file = state.files[index]
  render_list(state)
  set_diff(state.user_win, false)
  set_diff(state.agent_win, false)
  vim.api.nvim_win_set_buf(state.user_win, user_buffer(state, file))
  local name = ('forkyard://agent/%d/%s'):format(state.agent.number, file.path)
  local params = { agentId = state.agent.id, path = file.path }
  state.session:request('forkyard/agent/file', params, function(err, result)
    if seq ~= state.seq or not vim.api.nvim_win_is_valid(state.agent_win) then
      return
    end
    if err then
      require('forkyard.notice').show('Forkyard: ' .. (err.message or 'cannot read the agent file'), vim.log.levels.ERROR)
      return
    end
    local buf = scratch(name, text_lines(result.text), file.path)
    vim.b[buf].forkyard_root = state.session.root
    vim.b[buf].forkyard_diff = tab_key(state.session, state.agent)
    M._file_keymaps(state, buf)
    vim.api.nvim_win_set_buf(state.agent_win, buf)
    set_diff(state.user_win, true)
    set_diff(state.agent_win, true)
    vim.api.nvim_win_call(state.agent_win, function()
      vim.cmd('diffupdate')
      pcall(vim.cmd, 'normal! gg]c')
    end)
    vim.api.nvim_exec_autocmds('User', { pattern = 'ForkyardDiffShown', modeline = false })
  end)
end

local function file_at_cursor(state)
  local row = vim.api.nvim_win_get_cursor(0)[1]
  local index = row - LIST_HEADER_LINES
  return (index >= 1 and index <= #state.files) and index or nil
end

local function close(state)
  if vim.api.nvim_tabpage_is_valid(state.tab) and #vim.api.nvim_list_tabpages() > 1 then
    vim.cmd.tabclose(vim.api.nvim_tabpage_get_number(state.tab))
  end
end

local function common_bindings(state)
  local session, number = state.session, state.agent.number
  return {
    next_file = function()
      M.show_file(state, state.index % #state.files + 1)
    end,
    prev_file = function()
      M.show_file(state, (state.index - 2) % #state.files + 1)
    end,
    apply_file = function()
      actions.apply(session, number, { state.files[state.index].path })
    end,
    apply_all = function()
      actions.apply(session, number)
    end,
    discard = function()
      actions.discard(session, number, function()
        close(state)
      end)
    end,
    close = function()
      close(state)
    end,
  }
end

local function bind(buf, bindings)
  local keys = config.options.diff_keys
  for name, fn in pairs(bindings) do
    if keys[name] then
      vim.keymap.set('n', keys[name], fn, { buffer = buf, nowait = true, desc = 'Forkyard diff: ' .. name })
    end
  end
end

function M._file_keymaps(state, buf)
  bind(buf, common_bindings(state))
end

local function list_keymaps(state)
  local bindings = common_bindings(state)
  bindings.open = function()
    local index = file_at_cursor(state)
    if index then
      M.show_file(state, index)
    end
  end
  bindings.apply_file = function()
    local index = file_at_cursor(state) or state.index
    actions.apply(state.session, state.agent.number, { state.files[index].path })
  end
  bind(state.list_buf, bindings)
end

--- Build the tab: file list on the left, your side and the agent's side to its right.
local function new_tab(session, agent, files)
  vim.cmd('tabnew')
  local state = {
    session = session,
    agent = agent,
    files = files,
    tab = vim.api.nvim_get_current_tabpage(),
    list_win = vim.api.nvim_get_current_win(),
    index = 1,
    seq = 0,
  }
  state.list_buf = vim.api.nvim_get_current_buf()
  vim.api.nvim_buf_set_name(
    state.list_buf,
    ('forkyard://diff/%s/%d'):format(vim.fs.basename(session.root), agent.number)
  )
  vim.bo[state.list_buf].buftype = 'nofile'
  vim.bo[state.list_buf].bufhidden = 'wipe'
  vim.bo[state.list_buf].swapfile = false
  vim.bo[state.list_buf].filetype = 'forkyard-diff'
  vim.b[state.list_buf].forkyard_root = session.root
  vim.cmd('rightbelow vsplit')
  state.user_win = vim.api.nvim_get_current_win()
  vim.cmd('rightbelow vsplit')
  state.agent_win = vim.api.nvim_get_current_win()
  vim.api.nvim_win_set_width(state.list_win, LIST_WIDTH)
  vim.wo[state.list_win].winfixwidth = true
  vim.wo[state.list_win].cursorline = true
  vim.wo[state.list_win].wrap = false
  vim.wo[state.user_win].winbar = '%#Comment#yours: %f'
  vim.wo[state.agent_win].winbar = ('%%#Comment#agent #%d: %%f'):format(agent.number)
  vim.api.nvim_tabpage_set_var(state.tab, 'forkyard_diff', tab_key(session, agent))
  list_keymaps(state)
  vim.api.nvim_create_autocmd('BufWipeout', {
    buffer = state.list_buf,
    callback = function()
      tabs[tab_key(session, agent)] = nil
    end,
  })
  tabs[tab_key(session, agent)] = state
  return state
end

--- Open (or refresh) the diff tab of agent `ref`; `path` selects a file.
---@param session forkyard.Session
---@param ref string|integer
---@param path string?
function M.open(session, ref, path)
  session:request('forkyard/agent/diff', { agentId = actions.agent_ref(session, ref) }, function(err, result)
    if err then
      require('forkyard.notice').show('Forkyard: ' .. (err.message or 'cannot read the diff'), vim.log.levels.ERROR)
      return
    end
    local agent = session.agents[result.agentId] or session:agent(ref)
    if not agent then
      require('forkyard.notice').show('Forkyard: unknown agent ' .. tostring(ref), vim.log.levels.ERROR)
      return
    end
    local files = result.files or {}
    if #files == 0 then
      require('forkyard.notice').show(('Forkyard: agent #%d changed no file'):format(agent.number), vim.log.levels.INFO)
      return
    end
    local state = tabs[tab_key(session, agent)]
    if state and vim.api.nvim_tabpage_is_valid(state.tab) then
      vim.api.nvim_set_current_tabpage(state.tab)
      state.agent, state.files = agent, files
    else
      state = new_tab(session, agent, files)
    end
    local index = 1
    for i, file in ipairs(files) do
      if path and (file.path == path or file.oldPath == path) then
        index = i
      end
    end
    vim.api.nvim_set_current_win(state.list_win)
    M.show_file(state, index)
    pcall(vim.api.nvim_win_set_cursor, state.list_win, { LIST_HEADER_LINES + index, 0 })
  end)
end

--- The diff tab of an agent, if open (for tests and statuslines).
function M.tab_of(session, number)
  return tabs[session.root .. '#' .. number]
end

return M
