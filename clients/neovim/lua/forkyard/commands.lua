--- `:Forkyard <subcommand> ...`: parsing and completion. The task of `dispatch` and the
--- command of `run` are taken verbatim from the command line (quotes, pipes and all).
local M = {}

local function forkyard()
  return require('forkyard')
end

local function words(text)
  local list = {}
  for word in text:gmatch('%S+') do
    table.insert(list, word)
  end
  return list
end

--- `--role R --backend B rest of the task` -> ({role=R, backend=B}, "rest of the task")
function M.parse_dispatch(text)
  local opts = {}
  local rest = text
  while true do
    local flag, value, after = rest:match('^%s*%-%-(%a+)[=%s]+(%S+)%s*(.*)$')
    if not flag or (flag ~= 'role' and flag ~= 'backend' and flag ~= 'title') then
      break
    end
    opts[flag] = value
    rest = after
  end
  return opts, vim.trim(rest)
end

--- A file argument as a repository-relative path: `%`, relative to the working
--- directory, absolute, or already relative to the repository.
function M.repo_path(root, arg)
  local expanded = vim.fn.expand(arg)
  if expanded == '' then
    expanded = arg
  end
  local absolute = vim.fs.normalize(vim.fn.fnamemodify(expanded, ':p'))
  root = vim.fs.normalize(root)
  if vim.startswith(absolute, root .. '/') and vim.uv.fs_stat(absolute) then
    return absolute:sub(#root + 2)
  end
  return expanded
end

local function need(value, usage)
  if value == nil or value == '' then
    error('usage: :Forkyard ' .. usage, 0)
  end
  return value
end

local function context_of(opts)
  if not opts or opts.range == 0 then
    return nil
  end
  local name = vim.api.nvim_buf_get_name(0)
  if name == '' or vim.bo.buftype ~= '' then
    return nil
  end
  return {
    uri = vim.uri_from_fname(name),
    range = {
      start = { line = opts.line1 - 1, character = 0 },
      ['end'] = { line = opts.line2 - 1, character = 0 },
    },
  }
end

---@type table<string, {usage: string, run: fun(rest: string, opts: table)}>
M.subcommands = {
  chat = {
    usage = 'chat [new|<thread id>]',
    run = function(rest, opts)
      forkyard().chat(rest ~= '' and rest or nil, context_of(opts))
    end,
  },
  stop = {
    usage = 'stop',
    run = function()
      forkyard().stop()
    end,
  },
  dispatch = {
    usage = 'dispatch [--role R] [--backend B] <task>',
    run = function(rest)
      local flags, task = M.parse_dispatch(rest)
      forkyard().dispatch(need(task, 'dispatch [--role R] [--backend B] <task>'), flags)
    end,
  },
  run = {
    usage = 'run <shell command>',
    run = function(rest)
      forkyard().run(need(rest, 'run <shell command>'))
    end,
  },
  agents = {
    usage = 'agents',
    run = function()
      forkyard().agents()
    end,
  },
  diff = {
    usage = 'diff <n> [file]',
    run = function(rest)
      local args = words(rest)
      forkyard().diff(need(args[1], 'diff <n> [file]'), args[2])
    end,
  },
  apply = {
    usage = 'apply <n> [file...]',
    run = function(rest)
      local args = words(rest)
      local number = need(args[1], 'apply <n> [file...]')
      local files = vim.list_slice(args, 2)
      forkyard().apply(number, #files > 0 and files or nil)
    end,
  },
  discard = {
    usage = 'discard <n>',
    run = function(rest)
      forkyard().discard(need(words(rest)[1], 'discard <n>'))
    end,
  },
  cancel = {
    usage = 'cancel <n>',
    run = function(rest)
      forkyard().cancel(need(words(rest)[1], 'cancel <n>'))
    end,
  },
  follow = {
    usage = 'follow <n> [instruction]',
    run = function(rest)
      local number, text = rest:match('^%s*(%S+)%s*(.*)$')
      forkyard().follow_up(need(number, 'follow <n> [instruction]'), text ~= '' and text or nil)
    end,
  },
  details = {
    usage = 'details <n>',
    run = function(rest)
      forkyard().details(need(words(rest)[1], 'details <n>'))
    end,
  },
  trust = {
    usage = 'trust [--revoke]',
    run = function(rest)
      require('forkyard.trust').run(rest)
    end,
  },
}

--- The handler of `:Forkyard`.
function M.run(opts)
  local name, rest = opts.args:match('^%s*(%S+)%s*(.-)%s*$')
  if not name then
    name, rest = 'agents', ''
  end
  local sub = M.subcommands[name]
  if not sub then
    vim.notify(
      ('Forkyard: unknown subcommand %q; one of: %s'):format(name, table.concat(M.names(), ', ')),
      vim.log.levels.ERROR
    )
    return
  end
  local ok, err = pcall(sub.run, rest, opts)
  if not ok then
    vim.notify('Forkyard: ' .. tostring(err), vim.log.levels.ERROR)
  end
end

function M.names()
  local names = vim.tbl_keys(M.subcommands)
  table.sort(names)
  return names
end

-- --- completion -----------------------------------------------------------------------------

local AGENT_STATES_FOR = {
  diff = { done = true, applied = true, cancelled = true, failed = true, interrupted = true },
  apply = { done = true },
  discard = { done = true, cancelled = true, failed = true, interrupted = true, applied = true },
  cancel = { queued = true, starting = true, running = true },
  follow = { queued = true, starting = true, running = true, done = true, cancelled = true, failed = true },
  details = nil, -- any
}

local function filter(candidates, lead)
  return vim.tbl_filter(function(c)
    return vim.startswith(c, lead)
  end, candidates)
end

local function agent_numbers(session, sub)
  local wanted = AGENT_STATES_FOR[sub]
  local numbers = {}
  for _, agent in ipairs(session:agent_list()) do
    if not wanted or wanted[agent.state] then
      table.insert(numbers, tostring(agent.number))
    end
  end
  return numbers
end

--- The changed files of an agent, asked of the server (briefly: completion must stay
--- quick) and remembered per agent version.
local file_cache = {}
local function agent_files(session, number)
  local agent = session:agent(number)
  if not agent or not session:client() then
    return {}
  end
  local key = agent.id .. agent.updatedAt
  if not file_cache[key] then
    local result = session:request_sync('forkyard/agent/diff', { agentId = agent.id }, 1000)
    file_cache[key] = vim.tbl_map(function(file)
      return file.path
    end, result and result.files or {})
  end
  return file_cache[key]
end

function M.complete(lead, cmdline, cursor)
  local before = cmdline:sub(1, cursor)
  local args = words((before:gsub('^.-Forkyard!?', '', 1)))
  if before:match('%s$') then
    table.insert(args, '')
  end
  local position = #args
  if position <= 1 then
    return filter(M.names(), lead)
  end
  local sub = args[1]
  local session = require('forkyard.session').current()
  if not session then
    return {}
  end
  if sub == 'chat' and position == 2 then
    return filter(vim.list_extend({ 'new' }, require('forkyard.chat').thread_ids(session)), lead)
  end
  if sub == 'dispatch' then
    local previous = args[position - 1]
    local caps = session.capabilities or {}
    if previous == '--role' then
      return filter(caps.roles or { 'worker', 'explorer', 'default' }, lead)
    elseif previous == '--backend' then
      return filter(caps.backends or {}, lead)
    elseif vim.startswith(lead, '-') then
      return filter({ '--role', '--backend', '--title' }, lead)
    end
    return {}
  end
  if AGENT_STATES_FOR[sub] ~= nil or sub == 'details' then
    if position == 2 then
      return filter(agent_numbers(session, sub), lead)
    end
    if sub == 'diff' or sub == 'apply' then
      return filter(agent_files(session, args[2]), lead)
    end
  end
  return {}
end

return M
