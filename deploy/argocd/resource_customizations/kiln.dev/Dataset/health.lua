-- Kiln: health from the Ready condition, counted only once the operator has seen this generation.
local hs = {status = "Progressing", message = "waiting for the Kiln operator"}
-- Ready=False with one of these reasons is a wait, not a failure.
local waiting = {RollingOut = true, Pending = true, Running = true, Validating = true,
                 DatasetNotReady = true, NoRun = true, Verifying = true,
                 WaitingForData = true, WaitingForVerification = true}
local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "the operator has not reconciled generation " .. generation .. " yet"
  return hs
end
for _, c in ipairs(status.conditions) do
  if c.type == "Ready" then
    local text = (c.reason or "") .. ": " .. (c.message or "")
    if generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
      hs.message = "Ready is from an older generation (" .. text .. ")"
    elseif c.status == "True" then
      hs.status, hs.message = "Healthy", text
    elseif c.status == "False" and not waiting[c.reason] then
      hs.status, hs.message = "Degraded", text
    else
      hs.message = text
    end
    return hs
  end
end
return hs
