--- `:Forkyard trust [--revoke]`: let this repository's `.forkyard.toml` set models,
--- backends, setup and the sandbox (the server's `forkyard.trust` command, which records
--- it in the user's config and applies the file at once). The server says what it did in
--- one short message of its own, so success adds nothing here.
local sessions = require('forkyard.session')

local M = {}

local function notify(message, level)
  local ok, notice = pcall(require, 'forkyard.notice')
  if ok and type(notice) == 'table' and notice.show then
    notice.show(message, level)
  else
    vim.notify(message, level)
  end
end

---@param rest string `--revoke` or nothing
---@param callback fun(err: table?, result: table?)?
function M.run(rest, callback)
  local arg = vim.trim(rest or '')
  if arg ~= '' and arg ~= '--revoke' then
    notify('Forkyard: usage: trust [--revoke]', vim.log.levels.ERROR)
    return
  end
  local session, why = sessions.current()
  if not session then
    notify('Forkyard: ' .. why, vim.log.levels.WARN)
    return
  end
  local arguments = arg == '--revoke' and { { revoke = true } } or {}
  session:execute('forkyard.trust', arguments, function(err, result)
    if err then
      notify('Forkyard: trust failed: ' .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    end
    if callback then
      callback(err, result)
    end
  end)
end

return M
