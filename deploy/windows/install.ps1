<#
.SYNOPSIS
    Installs (or removes) the essl-relay agent as a Windows service.

.DESCRIPTION
    Copies essl-agent.exe to %ProgramFiles%\essl-agent, then runs `essl-agent service install`, which:
      - registers the service "essl-agent" with the Service Control Manager: automatic start, restarted 5 s after
        any failure, running as the virtual account NT SERVICE\essl-agent;
      - limits %ProgramData%\essl-agent to SYSTEM, Administrators and the service (the config holds the token);
      - writes %ProgramData%\essl-agent\agent.toml when -Server is given (or a template when there is none);
      - starts the service once the configuration is valid.
    Logs: %ProgramData%\essl-agent\logs\essl-agent.YYYY-MM-DD.log (14 days kept).
    Run it in an elevated PowerShell ("Run as administrator"):

        .\install.ps1 -Server wss://relay.example.com/agent/ws -Token essla_...
        .\install.ps1 -DryRun -Server wss://relay.example.com/agent/ws -Token essla_...   # print, change nothing
        .\install.ps1 -Uninstall                                                           # keeps config and logs

    If scripts are blocked: powershell -ExecutionPolicy Bypass -File .\install.ps1 ...

.PARAMETER Server
    The server's agent endpoint, wss://HOST/agent/ws.
.PARAMETER Token
    The agent token (essla_...) the server gave for this computer. It reaches essl-agent through its environment,
    never its command line.
.PARAMETER Binary
    essl-agent.exe to install; default: the one beside this script.
.PARAMETER Force
    Replace an existing agent.toml.
.PARAMETER Uninstall
    Stop and remove the service and %ProgramFiles%\essl-agent; %ProgramData%\essl-agent is kept.
.PARAMETER DryRun
    Print what would be done; change nothing.
#>
[CmdletBinding()]
param(
    [string]$Server,
    [string]$Token,
    [string]$Binary = (Join-Path $PSScriptRoot 'essl-agent.exe'),
    [switch]$Force,
    [switch]$Uninstall,
    [switch]$DryRun
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$identity = [Security.Principal.WindowsIdentity]::GetCurrent()
$principal = New-Object Security.Principal.WindowsPrincipal($identity)
if (-not $DryRun -and -not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'Run this script in an elevated PowerShell (Run as administrator).'
}

$installDir = Join-Path $env:ProgramFiles 'essl-agent'
$installed = Join-Path $installDir 'essl-agent.exe'

function Invoke-Agent([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "essl-agent $($Arguments -join ' ') failed (exit code $LASTEXITCODE)"
    }
}

if ($Uninstall) {
    $arguments = @('service', 'uninstall')
    if ($DryRun) { $arguments += '--dry-run' }
    if (Test-Path $installed) { Invoke-Agent $installed $arguments }
    if ($DryRun) {
        Write-Host "would remove $installDir"
    } else {
        Remove-Item -Recurse -Force $installDir -ErrorAction SilentlyContinue
    }
    Write-Host "Kept $(Join-Path $env:ProgramData 'essl-agent') (configuration, outbox, logs)."
    return
}

if (-not (Test-Path $Binary)) {
    throw "essl-agent.exe not found at $Binary; pass -Binary PATH"
}
if ($Token -and -not $Server) {
    throw '-Token needs -Server wss://HOST/agent/ws too'
}

$exe = $installed
if ($DryRun) {
    Write-Host "would copy $Binary to $installed (stopping the service first if it runs)"
    $exe = $Binary
} elseif ((Resolve-Path $Binary).Path -ne $installed) {
    # A running service keeps its executable open: stop it before replacing the file.
    $service = Get-Service -Name 'essl-agent' -ErrorAction SilentlyContinue
    if ($service -and $service.Status -ne 'Stopped') {
        Stop-Service -Name 'essl-agent' -Force
        $service.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(30))
    }
    New-Item -ItemType Directory -Force -Path $installDir | Out-Null
    Copy-Item -Force $Binary $installed
}

$arguments = @('service', 'install')
if ($Server) { $arguments += @('--server', $Server) }
if ($Force) { $arguments += '--force' }
if ($DryRun) { $arguments += '--dry-run' }
$hadToken = Test-Path Env:\ESSL_AGENT_TOKEN
if ($Token) { $env:ESSL_AGENT_TOKEN = $Token }
try {
    Invoke-Agent $exe $arguments
} finally {
    if ($Token -and -not $hadToken) { Remove-Item Env:\ESSL_AGENT_TOKEN -ErrorAction SilentlyContinue }
}
if (-not $DryRun) {
    Write-Host "Check the terminals from this computer: & '$installed' config check"
}
