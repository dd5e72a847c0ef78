--- `:checkhealth forkyard`: the server is found and answers (its version), the sandbox
--- (bubblewrap) is there and works, whether the repository is trusted (else which keys of
--- its `.forkyard.toml` are ignored), a model is configured and its endpoint reachable.
local config = require('forkyard.config')
local sessions = require('forkyard.session')

local M = {}

local health = vim.health
local SERVER_TIMEOUT_MS = 15000
local CONNECT_TIMEOUT_MS = 3000

local DEFAULT_URLS = {
  openai = 'https://api.openai.com/v1',
  anthropic = 'https://api.anthropic.com',
}

local function server_command()
  local cmd = config.options.cmd
  if type(cmd) == 'function' then
    local session = sessions.current()
    cmd = cmd(session and session.root or vim.fn.getcwd())
  end
  return cmd
end

--- `[models.NAME]` tables of a TOML file, read just enough to find where each model
--- lives (string values only). The server reads the real file; this only tells the check
--- which endpoints to try.
---@return table<string, table>
function M.read_toml_models(path)
  local models = {}
  local file = io.open(path, 'r')
  if not file then
    return models
  end
  local current
  for line in file:lines() do
    local header = line:match('^%s*%[([^%]]+)%]')
    if header then
      local name = vim.trim(header):match('^models%.(.+)$')
      current = name and vim.trim(name):gsub('^["\']', ''):gsub('["\']$', '') or nil
      if current then
        models[current] = models[current] or {}
      end
    elseif current then
      local key, value = line:match('^%s*([%w_]+)%s*=%s*"([^"]*)"')
      if not key then
        key, value = line:match("^%s*([%w_]+)%s*=%s*'([^']*)'")
      end
      if key then
        models[current][key] = value
      end
    end
  end
  file:close()
  return models
end

local function snake(key)
  return (key:gsub('(%l)(%u)', '%1_%2'):lower())
end

local function merge_models(into, models, source)
  for name, values in pairs(models or {}) do
    if type(values) == 'table' then
      into[name] = into[name] or {}
      for key, value in pairs(values) do
        into[name][snake(key)] = value
      end
      into[name].source = source
    end
  end
end

--- The models as this check can see them: the user's and the repository's TOML files,
--- then setup()'s options (later wins, as in the server).
function M.known_models(root)
  local models = {}
  local xdg = os.getenv('XDG_CONFIG_HOME')
  local user_file = vim.fs.joinpath(
    xdg and xdg ~= '' and xdg or vim.fs.joinpath(vim.uv.os_homedir(), '.config'),
    'forkyard',
    'config.toml'
  )
  merge_models(models, M.read_toml_models(user_file), user_file)
  if root then
    local repo_file = vim.fs.joinpath(root, '.forkyard.toml')
    merge_models(models, M.read_toml_models(repo_file), repo_file)
  end
  local init = config.initialization_options()
  merge_models(models, init.models, 'setup()')
  return models
end

--- Whether a TCP connection to the URL's host and port opens within the timeout.
---@return boolean, string
function M.reachable(url)
  local scheme, host, port = url:match('^(https?)://([^/:]+):?(%d*)')
  if not scheme then
    return false, 'not an http(s) URL'
  end
  port = tonumber(port) or (scheme == 'https' and 443 or 80)
  local infos, err = vim.uv.getaddrinfo(host, tostring(port), { socktype = 'stream' })
  if not infos or #infos == 0 then
    return false, ('cannot resolve %s: %s'):format(host, err or 'no address')
  end
  local tcp = assert(vim.uv.new_tcp())
  local done, failure = false, nil
  tcp:connect(infos[1].addr, port, function(connect_err)
    failure = connect_err
    done = true
  end)
  local finished = vim.wait(CONNECT_TIMEOUT_MS, function()
    return done
  end, 10)
  if not tcp:is_closing() then
    tcp:close()
  end
  if not finished then
    return false, ('no answer from %s:%d within %d ms'):format(host, port, CONNECT_TIMEOUT_MS)
  end
  if failure then
    return false, ('%s:%d: %s'):format(host, port, failure)
  end
  return true, ('%s:%d accepts connections'):format(host, port)
end

local function check_server()
  health.start('forkyard: server')
  local cmd = server_command()
  if type(cmd) ~= 'table' or not cmd[1] then
    health.error('the `cmd` option is not a command list', { 'setup({ cmd = { "forkyard", "serve" } })' })
    return nil
  end
  local exe = vim.fn.exepath(cmd[1])
  if exe == '' then
    health.error(('server command not found: %s'):format(cmd[1]), {
      'Install Forkyard so that `forkyard` is on PATH (`uv tool install /path/to/forkyard`)',
      'or set `cmd` in setup(), e.g. { "uv", "run", "--project", "/path/to/forkyard", "forkyard", "serve" }',
    })
    return nil
  end
  health.ok(
    ('server command found: %s'):format(table.concat(vim.list_extend({ exe }, vim.list_slice(cmd, 2)), ' '))
  )
  local session, why = sessions.current()
  if not session then
    health.warn(
      'cannot start the server here: ' .. why,
      { 'Run :checkhealth forkyard inside a git repository' }
    )
    return nil
  end
  local stats, err = session:request_sync('forkyard/server/stats', vim.empty_dict(), SERVER_TIMEOUT_MS)
  if not stats then
    health.error(
      ('the server did not answer: %s'):format(err),
      { 'See :LspLog, or run `forkyard serve` in a shell' }
    )
    return nil
  end
  local protocol = session.capabilities.version
  health.ok(
    ('server version %s (protocol %s), for %s'):format(stats.version, tostring(protocol or '?'), session.root)
  )
  if protocol and protocol ~= 1 then
    health.warn(('this plugin speaks protocol 1, the server %s'):format(tostring(protocol)))
  end
  return session, stats
end

local function backend_detail(session, name)
  for _, detail in ipairs(session.capabilities.backendDetails or {}) do
    if detail.name == name then
      return detail
    end
  end
  return nil
end

local function check_sandbox(session)
  health.start('forkyard: sandbox')
  local bwrap = vim.fn.exepath('bwrap')
  if bwrap == '' then
    health.warn('bwrap (bubblewrap) not found: agents cannot run commands sandboxed', {
      "apt-get install bubblewrap (or your distribution's package)",
      'or allow unsandboxed commands: allow_unsandboxed_commands = true',
    })
  else
    health.ok('bwrap found: ' .. bwrap)
  end
  local detail = session and backend_detail(session, 'command')
  if detail then
    if detail.available then
      health.ok('command agents can run')
    else
      health.warn('command agents cannot run: ' .. (detail.reason or 'no reason given'))
    end
  end
end

local function check_models(session, stats)
  health.start('forkyard: model')
  local llm = session and backend_detail(session, 'llm')
  if llm then
    if llm.available then
      health.ok('a model is configured (chat and llm agents)')
    else
      health.warn('no model: ' .. (llm.reason or 'not configured'), {
        'Add [models.default] to ~/.config/forkyard/config.toml or .forkyard.toml, or pass `models` to setup()',
        'Commands (`:Forkyard run`, chat /commands) work without a model',
      })
    end
  end
  local models = {}
  if stats and type(stats.models) == 'table' then
    -- A server that tells its resolved models (name -> config) is the best source.
    merge_models(models, stats.models, 'server')
  else
    models = M.known_models(session and session.root)
  end
  local names = vim.tbl_keys(models)
  table.sort(names)
  if #names == 0 then
    if llm and llm.available then
      health.info('the model is configured where this check cannot read it: reachability not checked')
    end
    return
  end
  for _, name in ipairs(names) do
    local model = models[name]
    local provider = model.provider or 'openai'
    local url = model.base_url or DEFAULT_URLS[provider]
    local label = ('model %q (%s %s, from %s)'):format(
      name,
      provider,
      model.model or '?',
      model.source or '?'
    )
    if not url then
      health.warn(label .. ': unknown provider ' .. provider)
    else
      local ok, detail = M.reachable(url)
      if ok then
        health.ok(('%s reachable at %s: %s'):format(label, url, detail))
      else
        health.error(('%s not reachable at %s: %s'):format(label, url, detail), {
          'Start the model server, or fix base_url',
        })
      end
    end
    local key_env = model.api_key_env
    if key_env and key_env ~= '' then
      local in_cmd_env = config.options.cmd_env and config.options.cmd_env[key_env]
      if (os.getenv(key_env) or '') == '' and not in_cmd_env then
        health.warn(
          ("%s: the environment variable %s is not set in Neovim's environment"):format(label, key_env),
          {
            'Export it in the shell that starts Neovim: the server inherits it',
          }
        )
      else
        health.ok(('%s: %s is set'):format(label, key_env))
      end
    end
  end
end

--- Whether the server applies the repository's `.forkyard.toml` in full, and if not,
--- what it left out (`forkyard/status`).
local function check_trust(session)
  health.start('forkyard: repository trust')
  if not session then
    return
  end
  local status, err = session:request_sync('forkyard/status', { disk = false }, SERVER_TIMEOUT_MS)
  if not status then
    health.warn('cannot ask the server whether this repository is trusted: ' .. tostring(err))
    return
  end
  if status.trusted == nil then
    health.info('this server does not report repository trust')
  elseif status.trusted then
    health.ok('repository trusted: its .forkyard.toml applies in full')
  else
    local ignored = status.ignoredKeys or {}
    local advice = { ':Forkyard trust, or `forkyard trust` in a shell (recorded in ' .. tostring(status.trustFile) .. ')' }
    if #ignored == 0 then
      health.info('repository not trusted; nothing in its .forkyard.toml needs trust')
    else
      health.warn(
        ('not trusted: %d keys of .forkyard.toml ignored (%s)'):format(#ignored, table.concat(ignored, ', ')),
        advice
      )
    end
  end
end

--- How the server makes agents' worktrees (`[worktree] mode`) and why: overlay
--- worktrees, or full ones where overlays cannot run on this machine (`forkyard/status`).
local function check_worktree_mode(session)
  health.start('forkyard: worktrees')
  if not session then
    return
  end
  local status, err = session:request_sync('forkyard/status', { disk = false }, SERVER_TIMEOUT_MS)
  if not status then
    health.warn('cannot ask the server how it makes worktrees: ' .. tostring(err))
  elseif status.worktreeMode == nil then
    health.info('this server does not report its worktree mode')
  elseif status.worktreeMode == 'overlay' then
    health.ok('worktree mode: overlay (' .. tostring(status.worktreeModeReason) .. ')')
  else
    health.info('worktree mode: full (' .. tostring(status.worktreeModeReason) .. ')')
  end
end

-- The agent programs the server can drive (external ones and ACP agents): which are
-- installed, and how to install the others. A program not installed is no problem.
local function check_agent_programs(session)
  health.start('forkyard: agent programs')
  if not session then
    return
  end
  for _, detail in ipairs(session.capabilities.backendDetails or {}) do
    if detail.kind == 'external' or detail.kind == 'acp' then
      local label = ('%s (%s)'):format(detail.name, detail.kind)
      if detail.available then
        health.ok(('%s: %s'):format(label, detail.reason or 'available'))
      else
        health.info(('%s not available: %s'):format(label, detail.reason or '?'))
      end
    end
  end
end

function M.check()
  health.start('forkyard: Neovim')
  local v = vim.version()
  if vim.fn.has('nvim-0.10') == 1 then
    health.ok(('Neovim %d.%d.%d'):format(v.major, v.minor, v.patch))
  else
    health.error('Neovim 0.10 or newer is needed')
    return
  end
  if require('forkyard')._setup_done then
    health.ok('setup() was called')
  else
    health.warn('setup() was not called: buffers do not start the server by themselves', {
      'require("forkyard").setup({})',
    })
  end
  local session, stats = check_server()
  check_sandbox(session)
  check_trust(session)
  check_worktree_mode(session)
  check_models(session, stats)
  check_agent_programs(session)
  if session and session:client() then
    local client = session:client()
    health.info(('client id %d, position encoding %s'):format(client.id, client.offset_encoding or '?'))
  end
end

return M
