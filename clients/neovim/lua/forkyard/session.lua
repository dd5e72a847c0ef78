--- One Forkyard session per git repository: the LSP client that talks to `forkyard serve`
--- for that root, and what the plugin knows from its notifications (agents, threads).
--- Views (chat, agents list, diff) read this state and subscribe to its changes, so a
--- notification updates every open view and nothing polls the server.
local compat = require('forkyard.compat')
local config = require('forkyard.config')
local threads = require('forkyard.threads')

local M = {}

local CLIENT_NAME = 'forkyard'

---@class forkyard.Session
---@field root string
---@field client_id integer?
---@field ready boolean
---@field pending {send: fun(), fail: fun(why: string)}[]
---@field agents table<string, table>  agent id -> Agent (wire format)
---@field threads table<string, forkyard.Thread>
---@field last_thread_id string?
---@field capabilities table  experimental.forkyard of the initialize result
---@field listeners table<string, table<any, fun(...)>>
local Session = {}
Session.__index = Session

---@type table<string, forkyard.Session>
local sessions = {}

local function normalize(path)
  return vim.fs.normalize(path)
end

--- The git repository that holds `path` (a file or a directory), if any.
---@param path string?
---@return string?
function M.repo_root(path)
  if not path or path == '' then
    return nil
  end
  local root = vim.fs.root(path, '.git')
  return root and normalize(root) or nil
end

---@param root string
---@return forkyard.Session
local function new_session(root)
  local self = setmetatable({
    root = root,
    client_id = nil,
    ready = false,
    pending = {},
    agents = {},
    threads = {},
    last_thread_id = nil,
    capabilities = {},
    listeners = {},
  }, Session)
  sessions[root] = self
  return self
end

--- Every session the plugin has, by root.
function M.all()
  return sessions
end

---@param root string
---@return forkyard.Session?
function M.get(root)
  return sessions[normalize(root)]
end

---@param root string
---@return forkyard.Session
function M.for_root(root)
  root = normalize(root)
  return sessions[root] or new_session(root)
end

--- The session the user means from where they are: a plugin buffer knows its root; a
--- file buffer is in a repository; else the working directory's repository; else the
--- only session there is.
---@param bufnr integer?
---@return forkyard.Session?, string?
function M.current(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local root = vim.b[bufnr].forkyard_root
  if not root and vim.bo[bufnr].buftype == '' then
    local name = vim.api.nvim_buf_get_name(bufnr)
    root = name ~= '' and M.repo_root(vim.fs.dirname(name)) or nil
  end
  root = root or M.repo_root(vim.fn.getcwd())
  if root then
    return M.for_root(root), nil
  end
  local only, count = nil, 0
  for _, session in pairs(sessions) do
    only, count = session, count + 1
  end
  if count == 1 then
    return only, nil
  end
  return nil, 'not inside a git repository (open a file of one, or :cd into it)'
end

-- --- events -------------------------------------------------------------------------

--- Subscribe `fn` to `event` ("agent", "thread", "ready"); `key` identifies the
--- subscriber so that a view subscribes once and can leave.
function Session:on(event, key, fn)
  self.listeners[event] = self.listeners[event] or {}
  self.listeners[event][key] = fn
end

function Session:off(event, key)
  if self.listeners[event] then
    self.listeners[event][key] = nil
  end
end

function Session:emit(event, ...)
  for _, fn in pairs(self.listeners[event] or {}) do
    local ok, err = pcall(fn, ...)
    if not ok then
      require('forkyard.notice').show('forkyard: ' .. tostring(err), vim.log.levels.ERROR)
    end
  end
end

-- --- the client -----------------------------------------------------------------------

---@return vim.lsp.Client?
function Session:client()
  local client = self.client_id and vim.lsp.get_client_by_id(self.client_id)
  if client and not compat.is_stopped(client) then
    return client
  end
  return nil
end

local function reuse(client, cfg)
  return client.name == CLIENT_NAME
    and not compat.is_stopped(client)
    and normalize(compat.root_dir(client) or '') == normalize(cfg.root_dir)
end

--- Neovim's own client capabilities, and Forkyard's structured notices: agents' notices
--- come as data (`forkyard/notice`: a kind, the agent's id, its actions), so a done agent
--- is known by its kind, never by the wording of a message.
function M.client_capabilities()
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  capabilities.experimental = vim.tbl_deep_extend(
    'force',
    type(capabilities.experimental) == 'table' and capabilities.experimental or {},
    { forkyard = { structuredNotices = true } }
  )
  return capabilities
end

--- The LSP client configuration for this repository.
function Session:client_config()
  local opts = config.options
  local cmd = opts.cmd
  if type(cmd) == 'function' then
    cmd = cmd(self.root)
  end
  return {
    name = CLIENT_NAME,
    cmd = cmd,
    cmd_env = opts.cmd_env,
    root_dir = self.root,
    workspace_folders = { { uri = vim.uri_from_fname(self.root), name = vim.fs.basename(self.root) } },
    init_options = config.initialization_options(),
    capabilities = M.client_capabilities(),
    handlers = self:handlers(),
    on_init = function(client, result)
      self:_on_init(client, result)
    end,
    on_exit = function(code, _, client_id)
      if self.client_id ~= client_id then
        return
      end
      self.client_id, self.ready = nil, false
      local queued = self.pending
      self.pending = {}
      for _, item in ipairs(queued) do
        item.fail(('the Forkyard server exited (code %s) before it was ready'):format(code))
      end
    end,
  }
end

--- Start the server for this repository, or reuse the running one; attach `bufnr` to
--- it when given.
---@param bufnr integer?
---@return integer? client_id
function Session:start(bufnr)
  local cfg = self:client_config()
  local exe = type(cfg.cmd) == 'table' and cfg.cmd[1] or nil
  if exe and vim.fn.executable(exe) ~= 1 then
    -- Said once, not at every buffer opened; commands say it again when used.
    if not self.told_missing then
      self.told_missing = true
      require('forkyard.notice').show('Forkyard: ' .. self:_start_failure(), vim.log.levels.WARN)
    end
    return nil
  end
  local client_id
  if bufnr then
    client_id = vim.lsp.start(cfg, { bufnr = bufnr, reuse_client = reuse })
  else
    client_id = compat.start_detached(cfg, reuse)
  end
  if client_id and client_id ~= self.client_id then
    self.client_id, self.ready = client_id, false
    local client = vim.lsp.get_client_by_id(client_id)
    if client and client.initialized then
      -- Reused a client started elsewhere (e.g. by a buffer before a restart of ours).
      self:_on_init(client, { capabilities = client.server_capabilities })
    end
  end
  return client_id
end

function Session:_on_init(client, result)
  self.client_id = client.id
  self.ready = true
  local experimental = vim.tbl_get(result or {}, 'capabilities', 'experimental', 'forkyard')
  self.capabilities = type(experimental) == 'table' and experimental or {}
  local queued = self.pending
  self.pending = {}
  for _, item in ipairs(queued) do
    item.send()
  end
  -- Agents from earlier sessions of the server (the store survives restarts).
  self:request('forkyard/agent/list', vim.empty_dict(), function(err, res)
    if not err and res then
      for _, agent in ipairs(res.agents or {}) do
        self:_set_agent(agent)
      end
    end
  end)
  self:emit('ready', self)
end

--- Send a request once the server is initialized; `callback(err, result)` runs on the
--- main loop. Never blocks.
---@param method string
---@param params table
---@param callback fun(err: table?, result: any)?
function Session:request(method, params, callback)
  callback = callback or function() end
  local function not_running(why)
    callback({ code = -32803, message = why or 'the Forkyard server is not running' }, nil)
  end
  local function send()
    local client = self:client()
    if not client then
      return not_running()
    end
    local ok = compat.request(client, method, params, function(err, result)
      callback(err, result)
    end)
    if not ok then
      not_running()
    end
  end
  if not self:client() and not self:start(nil) then
    return not_running(self:_start_failure())
  end
  if self.ready and self:client() then
    send()
  else
    -- Answered when the server has initialized, or failed when it exits before that.
    table.insert(self.pending, { send = send, fail = not_running })
  end
end

--- A done agent's notice with the outcome first and its title last, where cutting it to
--- the screen's width loses the least.
function Session:_done_text(agent)
  local c = agent.changes or {}
  return ('Forkyard #%d done, %d file(s) +%d -%d: %s'):format(
    agent.number,
    c.files or 0,
    c.additions or 0,
    c.deletions or 0,
    agent.title or ''
  )
end

--- Why the server cannot be started, as far as we can tell.
function Session:_start_failure()
  local cmd = self:client_config().cmd
  local exe = type(cmd) == 'table' and cmd[1] or nil
  if exe and vim.fn.executable(exe) ~= 1 then
    -- The reason first: a notice is cut to the screen's width, and the path is long.
    return ('server not executable (:checkhealth forkyard): %s'):format(exe)
  end
  return 'server cannot start (:checkhealth forkyard, :LspLog)'
end

--- A request answered before returning, for the few places that must (completion,
--- health). Waits at most `timeout_ms`.
function Session:request_sync(method, params, timeout_ms)
  if not self:client() and not self:start(nil) then
    return nil, self:_start_failure()
  end
  local ok = vim.wait(timeout_ms, function()
    return self.ready and self:client() ~= nil
  end, 10)
  if not ok then
    return nil, 'the Forkyard server did not start in time'
  end
  local response, err = compat.request_sync(self:client(), method, params, timeout_ms)
  if not response then
    return nil, err or 'no answer'
  end
  if response.err then
    return nil, response.err.message or vim.inspect(response.err)
  end
  return response.result, nil
end

--- `workspace/executeCommand` on the server.
function Session:execute(command, arguments, callback)
  self:request('workspace/executeCommand', { command = command, arguments = arguments }, callback)
end

-- --- agents -------------------------------------------------------------------------------

function Session:_set_agent(agent)
  local previous = self.agents[agent.id]
  if previous and previous.updatedAt and agent.updatedAt and previous.updatedAt > agent.updatedAt then
    return -- an older snapshot (agent/list answered after a newer notification)
  end
  if previous and vim.deep_equal(previous, agent) then
    return -- the same snapshot again (a notice carries the agent it is about): no event
  end
  self.agents[agent.id] = agent
  self:emit('agent', agent, previous and previous.state or nil)
  -- For statuslines and the user's own autocommands: `data` is the agent (wire format).
  vim.api.nvim_exec_autocmds('User', { pattern = 'ForkyardAgentChanged', modeline = false, data = agent })
end

--- Agents, newest first.
---@return table[]
function Session:agent_list()
  local list = vim.tbl_values(self.agents)
  table.sort(list, function(a, b)
    return a.number > b.number
  end)
  return list
end

--- The agent a person means by "3", "#3" or an id.
---@param ref string|integer
---@return table?
function Session:agent(ref)
  ref = tostring(ref):gsub('^#', '')
  if self.agents[ref] then
    return self.agents[ref]
  end
  local number = tonumber(ref)
  for _, agent in pairs(self.agents) do
    if agent.number == number then
      return agent
    end
  end
  return nil
end

-- --- threads --------------------------------------------------------------------------------

function Session:thread(thread_id)
  return threads.get(self.threads, thread_id)
end

function Session:_on_delta(params)
  local thread, entry = threads.delta(self.threads, params)
  self:emit('thread', thread.id, entry)
end

function Session:_on_message(message)
  local thread, entry = threads.message(self.threads, message)
  self.last_thread_id = thread.id
  self:emit('thread', thread.id, entry)
end

function Session:_on_turn(params)
  self:emit('thread', threads.turn(self.threads, params).id, nil)
end

--- Load a thread's stored messages, merged with what streamed meanwhile.
function Session:load_thread(thread_id, callback)
  self:request('forkyard/thread/read', { threadId = thread_id }, function(err, result)
    if err then
      return callback(err)
    end
    local thread = threads.merge_stored(self.threads, thread_id, result)
    self:emit('thread', thread_id, nil)
    callback(nil, thread)
  end)
end

-- --- handlers of what the server sends ----------------------------------------------------------

local MESSAGE_LEVELS = {
  [1] = vim.log.levels.ERROR,
  [2] = vim.log.levels.WARN,
  [3] = vim.log.levels.INFO,
  [4] = vim.log.levels.DEBUG,
}

local NOTICE_LEVELS = {
  info = vim.log.levels.INFO,
  warning = vim.log.levels.WARN,
  error = vim.log.levels.ERROR,
}

--- What to type next about a done agent, kept whole when the notice is cut to fit.
local function done_hint(number)
  return ('  :Forkyard diff %s | apply %s'):format(number, number)
end

--- What each action of a done agent's notice does, by the action's name in the protocol.
local DONE_ACTIONS = {
  ['Show diff'] = function(session, agent)
    require('forkyard.diff').open(session, agent.number) -- our diff view, not a patch file
  end,
  Apply = function(session, agent)
    require('forkyard.actions').apply(session, agent.number)
  end,
  Discard = function(session, agent)
    require('forkyard.actions').discard(session, agent.number)
  end,
}

--- Ask what to do with a done agent, with vim.ui.select (never a blocking inputlist:
--- nothing waits for the answer); actions this plugin does not know are not offered.
function Session:_ask_on_done(agent, message, actions)
  local offered = vim.tbl_filter(function(action)
    return DONE_ACTIONS[action] ~= nil
  end, actions or {})
  if #offered == 0 then
    return
  end
  vim.ui.select(offered, { prompt = message, kind = 'forkyard.done' }, function(choice)
    if choice then
      DONE_ACTIONS[choice](self, agent)
    end
  end)
end

--- `forkyard/notice`: an agent's notice as data. A done agent is known by `kind` and
--- `agentId`; every other notice is its one line, as the server wrote it.
function Session:_on_notice(params)
  local level = NOTICE_LEVELS[params.level] or vim.log.levels.INFO
  if type(params.agent) == 'table' then
    self:_set_agent(params.agent)
  end
  local agent = type(params.agentId) == 'string' and self.agents[params.agentId] or nil
  if params.kind ~= 'agentDone' or not agent then
    require('forkyard.notice').show(params.message, level)
    return
  end
  if config.options.notify_on_done then
    require('forkyard.notice').show_with(self:_done_text(agent), done_hint(agent.number), level)
  end
  if config.options.ask_on_done then
    vim.schedule(function()
      self:_ask_on_done(agent, params.message, params.actions)
    end)
  end
end

function Session:handlers()
  return {
    ['forkyard/agent/changed'] = function(_, params)
      if params and params.agent then
        self:_set_agent(params.agent)
      end
    end,
    ['forkyard/chat/delta'] = function(_, params)
      self:_on_delta(params)
    end,
    ['forkyard/chat/message'] = function(_, params)
      self:_on_message(params.message)
    end,
    ['forkyard/chat/turn'] = function(_, params)
      self:_on_turn(params)
    end,
    ['forkyard/notice'] = function(_, params)
      if type(params) == 'table' then
        self:_on_notice(params)
      end
    end,
    -- Settings problems and the daemon's messages (agents' notices come as
    -- forkyard/notice): Neovim's own handler echoes them; vim.notify lets notification
    -- plugins show them. Approvals (window/showMessageRequest) go to Neovim's own handler.
    ['window/showMessage'] = function(_, params)
      require('forkyard.notice').show(params.message, MESSAGE_LEVELS[params.type] or vim.log.levels.INFO)
      return vim.NIL
    end,
  }
end

M.Session = Session
return M
