--- The few places where Neovim 0.10 and 0.11 differ for this plugin. In 0.11 client
--- methods are called with `:` (the `.` form is deprecated); 0.10 only has `.`.
local M = {}

M.is_011 = vim.fn.has('nvim-0.11') == 1

---@param client vim.lsp.Client
function M.request(client, method, params, handler, bufnr)
  if M.is_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

---@param client vim.lsp.Client
function M.request_sync(client, method, params, timeout_ms, bufnr)
  if M.is_011 then
    return client:request_sync(method, params, timeout_ms, bufnr)
  end
  return client.request_sync(method, params, timeout_ms, bufnr)
end

---@param client vim.lsp.Client
function M.notify(client, method, params)
  if M.is_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

---@param client vim.lsp.Client
function M.stop(client, force)
  if M.is_011 then
    return client:stop(force)
  end
  return client.stop(force)
end

---@param client vim.lsp.Client
function M.is_stopped(client)
  if M.is_011 then
    return client:is_stopped()
  end
  return client.is_stopped()
end

--- Start (or reuse) a client without attaching it to any buffer: 0.11 has
--- `attach = false`, 0.10 only `vim.lsp.start_client()`.
---@param config vim.lsp.ClientConfig
---@param reuse fun(client: vim.lsp.Client, config: table): boolean
---@return integer?
function M.start_detached(config, reuse)
  if M.is_011 then
    return vim.lsp.start(config, { attach = false, reuse_client = reuse })
  end
  for _, client in ipairs(vim.lsp.get_clients({ name = config.name })) do
    if reuse(client, config) then
      return client.id
    end
  end
  return vim.lsp.start_client(config)
end

---@param client vim.lsp.Client
---@return string?
function M.root_dir(client)
  return client.root_dir or (client.config and client.config.root_dir)
end

return M
