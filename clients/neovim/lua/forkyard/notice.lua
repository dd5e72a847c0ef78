--- Every message the plugin shows goes through here, so that none can raise Neovim's
--- "Press ENTER" prompt: a notice is one line that fits the space the command line has
--- for it (`v:echospace`), its details one command away (`:Forkyard agents`,
--- `:Forkyard details N`). It still goes through `vim.notify`, so nvim-notify, fidget or
--- snacks can take it over.
local M = {}

--- The first line of `text`, cut to `width` display cells with an ellipsis.
---@param text string
---@param width integer
---@return string
function M.fit(text, width)
  local line = tostring(text):gsub('\r', ''):match('^[^\n]*') or ''
  local more = tostring(text):find('\n[^\n]*%S') ~= nil
  if width < 2 then
    width = 2
  end
  if vim.fn.strdisplaywidth(line) <= width and not more then
    return line
  end
  local cut = line
  while vim.fn.strdisplaywidth(cut .. '…') > width and #cut > 0 do
    cut = vim.fn.strcharpart(cut, 0, vim.fn.strchars(cut) - 1)
  end
  return cut .. '…'
end

--- The width a notice may take without a hit-enter prompt.
---@return integer
function M.width()
  local space = vim.v.echospace
  if type(space) ~= 'number' or space <= 0 then
    space = vim.o.columns - 12
  end
  return space
end

--- Show `text` as one line that fits.
---@param text string
---@param level integer?
function M.show(text, level)
  vim.notify(M.fit(text, M.width()), level or vim.log.levels.INFO, { title = 'forkyard' })
end

--- Show `text` cut to fit, then `suffix` whole (a command that shows the rest).
---@param text string
---@param suffix string
---@param level integer?
function M.show_with(text, suffix, level)
  local room = M.width() - vim.fn.strdisplaywidth(suffix)
  vim.notify(M.fit(text, room) .. suffix, level or vim.log.levels.INFO, { title = 'forkyard' })
end

return M
