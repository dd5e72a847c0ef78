--- Forkyard for Neovim: background coding agents in git worktrees, a chat that never
--- waits, and review with Neovim's own LSP client (diagnostics, code actions, progress).
---
---     require("forkyard").setup({ max_parallel_agents = 4 })
---
--- See `:help forkyard`.
local config = require('forkyard.config')
local sessions = require('forkyard.session')

local M = {}

M._setup_done = false

local function session_or_warn()
  local session, err = sessions.current()
  if not session then
    require('forkyard.notice').show('Forkyard: ' .. err, vim.log.levels.WARN)
  end
  return session
end

--- Start (or reuse) the server of the buffer's repository and attach the buffer, so
--- diagnostics and code actions of done agents show in it.
---@param bufnr integer?
---@return integer? client_id
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if not vim.api.nvim_buf_is_valid(bufnr) or vim.bo[bufnr].buftype ~= '' then
    return nil
  end
  local name = vim.api.nvim_buf_get_name(bufnr)
  if name == '' or name:match('^%a[%w+.-]*://') then
    return nil
  end
  local filetypes = config.options.filetypes
  if filetypes and not vim.tbl_contains(filetypes, vim.bo[bufnr].filetype) then
    return nil
  end
  local root = sessions.repo_root(vim.fs.dirname(vim.fs.normalize(vim.fn.fnamemodify(name, ':p'))))
  if not root then
    return nil
  end
  return sessions.for_root(root):start(bufnr)
end

local KEYMAP_ACTIONS = {
  chat = {
    function()
      M.chat()
    end,
    'Forkyard: chat',
  },
  agents = {
    function()
      M.agents()
    end,
    'Forkyard: agents',
  },
  stop = {
    function()
      M.stop()
    end,
    'Forkyard: interrupt the chat',
  },
  dispatch = {
    function()
      vim.ui.input({ prompt = 'Forkyard task: ' }, function(task)
        if task and vim.trim(task) ~= '' then
          M.dispatch(task)
        end
      end)
    end,
    'Forkyard: dispatch an agent',
  },
  run = {
    function()
      vim.ui.input({ prompt = 'Forkyard command: ' }, function(command)
        if command and vim.trim(command) ~= '' then
          M.run(command)
        end
      end)
    end,
    'Forkyard: run a command as an agent',
  },
}

--- Configure the plugin; see `:help forkyard-setup`. Only the keymaps you name are set.
---@param opts forkyard.Options?
function M.setup(opts)
  config.set(opts)
  M._setup_done = true
  local group = vim.api.nvim_create_augroup('forkyard', { clear = true })
  if config.options.auto_attach then
    vim.api.nvim_create_autocmd({ 'BufReadPost', 'BufNewFile', 'FileType' }, {
      group = group,
      callback = function(args)
        M.attach(args.buf)
      end,
    })
    for _, buf in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_loaded(buf) then
        M.attach(buf)
      end
    end
  end
  for name, lhs in pairs(config.options.keymaps or {}) do
    local action = KEYMAP_ACTIONS[name]
    if not action then
      require('forkyard.notice').show(('Forkyard: unknown keymap action %q'):format(name), vim.log.levels.WARN)
    elseif lhs then
      vim.keymap.set('n', lhs, action[1], { desc = action[2] })
    end
  end
end

--- Open the chat. `thread`: nil (the last one), "new", or a thread id; `context`:
--- `{uri, range?}` sent with the next message.
function M.chat(thread, context)
  local session = session_or_warn()
  return session and require('forkyard.chat').open(session, thread, context)
end

--- Interrupt the running reply of the chat.
function M.stop()
  local session = session_or_warn()
  if session then
    require('forkyard.chat').stop(session)
  end
end

--- Start an agent on `task`. `opts`: role, backend, title.
function M.dispatch(task, opts, callback)
  local session = session_or_warn()
  if session then
    require('forkyard.actions').dispatch(session, task, opts, callback)
  end
end

--- Run a shell command as a background agent in its own worktree.
function M.run(command, callback)
  local session = session_or_warn()
  if session then
    require('forkyard.actions').run(session, command, callback)
  end
end

--- The agents list.
function M.agents()
  local session = session_or_warn()
  return session and require('forkyard.agents').open(session)
end

--- The diff tab of agent `n` (`path`: the file to show first).
function M.diff(n, path)
  local session = session_or_warn()
  if session then
    local repo_path = path and require('forkyard.commands').repo_path(session.root, path)
    require('forkyard.diff').open(session, n, repo_path)
  end
end

--- Apply agent `n` to your checkout (its open buffers get the edits), all of it or
--- `paths` only.
---@param paths string[]?
function M.apply(n, paths, callback)
  local session = session_or_warn()
  if not session then
    return
  end
  if paths then
    local to_repo = require('forkyard.commands').repo_path
    paths = vim.tbl_map(function(p)
      return to_repo(session.root, p)
    end, paths)
  end
  require('forkyard.actions').apply(session, n, paths, callback)
end

function M.discard(n, callback)
  local session = session_or_warn()
  if session then
    require('forkyard.actions').discard(session, n, callback)
  end
end

function M.cancel(n, callback)
  local session = session_or_warn()
  if session then
    require('forkyard.actions').cancel(session, n, callback)
  end
end

--- Send agent `n` a follow-up instruction (asked for when `text` is nil).
function M.follow_up(n, text)
  local session = session_or_warn()
  if not session then
    return
  end
  if text then
    require('forkyard.actions').message(session, n, text)
  else
    require('forkyard.actions').ask_follow_up(session, n)
  end
end

--- Agent `n`'s details and log.
function M.details(n)
  local session = session_or_warn()
  if session then
    require('forkyard.agents').details(session, n)
  end
end

--- A short text for a statusline: "forkyard: 2 running, 1 done" ('' when idle).
function M.status()
  local session = sessions.current()
  if not session then
    return ''
  end
  local counts = {}
  for _, agent in pairs(session.agents) do
    counts[agent.state] = (counts[agent.state] or 0) + 1
  end
  local parts = {}
  for _, state in ipairs({ 'running', 'starting', 'queued', 'done' }) do
    if counts[state] then
      table.insert(parts, ('%d %s'):format(counts[state], state))
    end
  end
  return #parts > 0 and ('forkyard: ' .. table.concat(parts, ', ')) or ''
end

return M
