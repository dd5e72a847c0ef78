--- Options of `require("forkyard").setup()`, their defaults, and what the server gets
--- from them as `initializationOptions`.
local M = {}

---@class forkyard.Options
M.defaults = {
  --- The server command; `forkyard serve` talks LSP over stdio.
  cmd = { 'forkyard', 'serve' },
  --- Extra environment for the server (API keys are better exported in the shell).
  cmd_env = nil,
  --- How many agents run at once (server default when nil).
  max_parallel_agents = nil,
  --- Chat models, as the `[models.NAME]` tables of the TOML config, e.g.
  --- `{ default = { provider = "openai", base_url = "http://127.0.0.1:11434/v1", model = "qwen2.5-coder:14b" } }`.
  models = nil,
  --- Any other server settings (TOML keys), sent with the ones above.
  settings = nil,
  --- Start the server for every file buffer inside a git repository.
  auto_attach = true,
  --- Only these filetypes (nil: every file).
  filetypes = nil,
  --- Global normal-mode keymaps; none unless you name them, e.g.
  --- `{ chat = "<leader>ac", agents = "<leader>aa", dispatch = "<leader>ad", run = "<leader>ar", stop = "<leader>as" }`.
  keymaps = {},
  --- Keys inside the plugin's own buffers (false disables one).
  agents_keys = {
    diff = 'd',
    apply = 'a',
    discard = 'X',
    cancel = 'c',
    follow_up = 'm',
    details = '<CR>',
    refresh = 'r',
    close = 'q',
  },
  chat_keys = {
    send = '<CR>', -- normal mode, in the prompt window
    send_insert = '<C-s>', -- insert mode, in the prompt window
    stop = '<C-c>',
    close = 'q',
  },
  diff_keys = {
    open = '<CR>',
    next_file = ']f',
    prev_file = '[f',
    apply_file = 'a',
    apply_all = 'A',
    discard = 'X',
    close = 'q',
  },
  chat = {
    --- Where `:Forkyard chat` opens: "right", "left", "below", "above", "tab" or "current".
    position = 'right',
    width = 80,
    height = 15,
    prompt_height = 4,
  },
  --- `vim.notify` when an agent is done (and failed agents via the server's message).
  notify_on_done = true,
  --- Ask "Show diff / Apply / Discard" with `vim.ui.select` when an agent is done,
  --- instead of only notifying.
  ask_on_done = false,
}

---@type forkyard.Options
M.options = vim.deepcopy(M.defaults)

---@param opts table?
---@return forkyard.Options
function M.set(opts)
  opts = opts or {}
  -- Checked by hand: vim.validate's table form is deprecated in 0.11, its new form
  -- missing in 0.10.
  local expected = {
    cmd = { 'table', 'function' },
    max_parallel_agents = { 'number' },
    models = { 'table' },
    settings = { 'table' },
    keymaps = { 'table' },
    filetypes = { 'table' },
  }
  for key, types in pairs(expected) do
    local value = opts[key]
    if value ~= nil and not vim.tbl_contains(types, type(value)) then
      error(
        ('forkyard.setup: %s must be a %s, got %s'):format(key, table.concat(types, ' or '), type(value)),
        3
      )
    end
  end
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  return M.options
end

--- The settings the server reads as `initializationOptions` (snake_case keys work: the
--- server normalises them).
---@return table
function M.initialization_options()
  local o = M.options
  local init = vim.deepcopy(o.settings or {})
  if o.max_parallel_agents then
    init.max_parallel_agents = o.max_parallel_agents
  end
  if o.models then
    init.models = vim.tbl_deep_extend('force', init.models or {}, o.models)
  end
  return init
end

return M
