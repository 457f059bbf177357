# arc-onboard: installs the Azure Connected Machine agent and connects this machine to Azure Arc.
# Sent through SSM Run Command (AWS-RunPowerShellScript, which saves it as UTF-8 with a byte order mark).
# One text serves a whole batch of instances, so nothing per-instance is below: the instance id is read
# from IMDSv2. Runs on Windows PowerShell 5.1 and PowerShell 7. The parameters are filled in by arc-onboard.
#@ARC_ONBOARD_PARAMETERS@
# End of parameters.

$ErrorActionPreference = 'Continue'
$ProgressPreference = 'SilentlyContinue'

# Test hook only: SSM never sets it, so the real endpoint is used on EC2.
$ImdsEndpoint = if ($env:ARC_ONBOARD_IMDS) { $env:ARC_ONBOARD_IMDS } else { 'http://169.254.169.254' }
$ProgramFiles64 = if ($env:ProgramW6432) { $env:ProgramW6432 } else { $env:ProgramFiles }
$AgentPath = Join-Path $ProgramFiles64 'AzureConnectedMachineAgent\azcmagent.exe'

# The script's own exit codes (the agent's AZCM codes start above 10).
$ExitImds = 3
$ExitDownload = 4
$ExitInstall = 5
$ExitUnsupported = 6
$ExitProxyConfig = 7

$script:WorkDir = $null

function Write-Log([string]$Text) {
    [Console]::Out.WriteLine("arc-onboard: $Text")
}

# Replaces the access token with a marker in text about to be printed.
function Hide-Token([string]$Text) {
    if ($ARC_ACCESS_TOKEN) { return $Text.Replace($ARC_ACCESS_TOKEN, '[redacted]') }
    return $Text
}

# Prints the last lines of some output (without the access token), indented.
function Show-Tail([string]$Text) {
    $lines = @(($Text -split "`r?`n") | Where-Object { $_ -ne '' })
    foreach ($line in ($lines | Select-Object -Last 40)) {
        [Console]::Out.WriteLine('    ' + (Hide-Token $line))
    }
}

function New-Result([string]$Outcome, [int]$Code, [string]$Step, [string]$Message) {
    return [pscustomobject]@{ Outcome = $Outcome; Code = $Code; Step = $Step; Message = $Message }
}

# Quotes one argument for a Windows command line (the rules CommandLineToArgvW and Go programs use), so that
# values reach azcmagent.exe verbatim on every PowerShell version.
function ConvertTo-WindowsArgument([string]$Value) {
    if ($Value -ne '' -and $Value -notmatch '[\s"]') { return $Value }
    $backslash = [char]'\'
    $builder = New-Object System.Text.StringBuilder
    [void]$builder.Append([char]'"')
    $backslashes = 0
    foreach ($c in $Value.ToCharArray()) {
        if ($c -eq $backslash) {
            $backslashes++
            continue
        }
        if ($c -eq [char]'"') {
            [void]$builder.Append($backslash, 2 * $backslashes + 1)
        } elseif ($backslashes -gt 0) {
            [void]$builder.Append($backslash, $backslashes)
        }
        $backslashes = 0
        [void]$builder.Append($c)
    }
    if ($backslashes -gt 0) { [void]$builder.Append($backslash, 2 * $backslashes) }
    [void]$builder.Append([char]'"')
    return $builder.ToString()
}

# Runs azcmagent.exe with the given arguments; its output goes straight to this script's output.
function Invoke-Agent([string[]]$Arguments) {
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = $AgentPath
    $info.Arguments = (@($Arguments | ForEach-Object { ConvertTo-WindowsArgument $_ }) -join ' ')
    $info.UseShellExecute = $false
    $process = [System.Diagnostics.Process]::Start($info)
    $process.WaitForExit()
    return $process.ExitCode
}

function Test-AgentConnected {
    if (-not (Test-Path -LiteralPath $AgentPath)) { return $false }
    try {
        $shown = (& $AgentPath show -j 2>$null | Out-String)
    } catch {
        return $false
    }
    try {
        $parsed = $shown | ConvertFrom-Json
        if ($parsed.status -eq 'Connected') { return $true }
    } catch {
        Write-Log 'azcmagent show -j did not print JSON; looking for the status line'
    }
    return ($shown -match '"status"\s*:\s*"Connected"')
}

# One IMDSv2 request, never through a proxy.
function Invoke-Imds([string]$Method, [string]$Path, [hashtable]$Headers) {
    $lastError = $null
    for ($attempt = 1; $attempt -le 3; $attempt++) {
        try {
            $request = [System.Net.WebRequest]::Create($ImdsEndpoint + $Path)
            $request.Method = $Method
            $request.Proxy = $null
            $request.Timeout = 5000
            foreach ($name in $Headers.Keys) { $request.Headers.Add($name, $Headers[$name]) }
            if ($Method -eq 'PUT') { $request.ContentLength = 0 }
            $response = $request.GetResponse()
            try {
                $reader = New-Object System.IO.StreamReader($response.GetResponseStream())
                return $reader.ReadToEnd().Trim()
            } finally {
                $response.Close()
            }
        } catch {
            $lastError = $_
            Start-Sleep -Seconds 1
        }
    }
    throw $lastError
}

function Invoke-Onboarding {
    # 1. Already connected?
    if (Test-AgentConnected) {
        Write-Log 'the Azure Connected Machine agent is already connected; nothing to do'
        return (New-Result 'already-connected' 0 'check' 'agent already connected')
    }
    if (-not [Environment]::Is64BitProcess) {
        return (New-Result 'failed' $ExitUnsupported 'platform' 'not running in 64-bit PowerShell')
    }

    # 2. The instance id, from IMDSv2.
    Write-Log 'reading the instance id from IMDSv2'
    try {
        $imdsToken = Invoke-Imds 'PUT' '/latest/api/token' @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '300' }
        $instanceId = Invoke-Imds 'GET' '/latest/meta-data/instance-id' @{ 'X-aws-ec2-metadata-token' = $imdsToken }
    } catch {
        return (New-Result 'failed' $ExitImds 'imds' "cannot read the instance id from IMDSv2: $($_.Exception.Message)")
    }
    if ($instanceId -cnotmatch '^i-[0-9a-f]{8,17}$') {
        return (New-Result 'failed' $ExitImds 'imds' 'IMDSv2 returned an invalid instance id')
    }
    Write-Log "instance id: $instanceId"

    # 3. Download and run the installer.
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    $script:WorkDir = Join-Path ([System.IO.Path]::GetTempPath()) ('arc-onboard-' + [guid]::NewGuid().ToString('N'))
    try {
        New-Item -ItemType Directory -Path $script:WorkDir -ErrorAction Stop | Out-Null
    } catch {
        $script:WorkDir = $null
        return (New-Result 'failed' $ExitDownload 'download' 'cannot create a temporary directory')
    }
    $installer = Join-Path $script:WorkDir 'install_windows_azcmagent.ps1'
    $download = @{ Uri = $ARC_INSTALLER_URL; OutFile = $installer; UseBasicParsing = $true; ErrorAction = 'Stop' }
    $installerArguments = @{}
    if ($ARC_PROXY_URL) {
        $download.Proxy = $ARC_PROXY_URL
        $installerArguments.Proxy = $ARC_PROXY_URL
        Write-Log "using proxy $ARC_PROXY_URL"
    }
    Write-Log "downloading the agent installer from $ARC_INSTALLER_URL"
    $downloaded = $false
    $downloadError = ''
    for ($attempt = 1; $attempt -le 5 -and -not $downloaded; $attempt++) {
        try {
            Invoke-WebRequest @download | Out-Null
            $downloaded = $true
        } catch {
            $downloadError = $_.Exception.Message
            Start-Sleep -Seconds 3
        }
    }
    if (-not $downloaded) {
        return (New-Result 'failed' $ExitDownload 'download' "cannot download the agent installer from ${ARC_INSTALLER_URL}: $downloadError")
    }

    Write-Log 'running the agent installer'
    $global:LASTEXITCODE = 0
    try {
        $installOutput = (& $installer @installerArguments *>&1 | Out-String)
        $installExit = $LASTEXITCODE
    } catch {
        $installOutput = $_.Exception.Message
        $installExit = 1
    }
    if ($installExit -ne 0) {
        Show-Tail $installOutput
        return (New-Result 'failed' $ExitInstall 'install' "the agent installer failed (exit $installExit)")
    }
    if (-not (Test-Path -LiteralPath $AgentPath)) {
        Show-Tail $installOutput
        return (New-Result 'failed' $ExitInstall 'install' 'azcmagent.exe is missing after the installation')
    }
    Write-Log "agent installed: $AgentPath"

    if ($ARC_PROXY_URL) {
        $code = Invoke-Agent @('config', 'set', 'proxy.url', $ARC_PROXY_URL)
        if ($code -ne 0) {
            return (New-Result 'failed' $ExitProxyConfig 'proxy-config' "azcmagent config set proxy.url exited with $code")
        }
    }

    # 4. Connect.
    $connect = @('connect',
        '--subscription-id', $ARC_SUBSCRIPTION_ID,
        '--resource-group', $ARC_RESOURCE_GROUP,
        '--location', $ARC_LOCATION,
        '--tenant-id', $ARC_TENANT_ID,
        '--cloud', $ARC_CLOUD)
    if ($ARC_CORRELATION_ID) { $connect += @('--correlation-id', $ARC_CORRELATION_ID) }
    if ($ARC_TAGS) { $connect += @('--tags', $ARC_TAGS) }
    $connect += @('--resource-name', $instanceId, '--access-token', $ARC_ACCESS_TOKEN)
    Write-Log "connecting to Azure Arc as $instanceId"
    $code = Invoke-Agent $connect
    switch ($code) {
        0 { return (New-Result 'connected' 0 'connect' "connected as $instanceId") }
        67 { return (New-Result 'already-connected' 0 'connect' 'azcmagent connect reported the machine already connected (exit 67)') }
        default { return (New-Result 'failed' $code 'connect' "azcmagent connect exited with $code") }
    }
}

try {
    # The last object is the result (guards against stray output in the function's pipeline).
    $result = Invoke-Onboarding | Select-Object -Last 1
} catch {
    $result = New-Result 'failed' 1 'unexpected' $_.Exception.Message
} finally {
    if ($script:WorkDir) { Remove-Item -LiteralPath $script:WorkDir -Recurse -Force -ErrorAction SilentlyContinue }
}

# 5. The result line, last.
$line = [ordered]@{
    outcome   = $result.Outcome
    exit_code = [int]$result.Code
    step      = $result.Step
    message   = (Hide-Token $result.Message)
}
[Console]::Out.WriteLine('ARC_ONBOARD_RESULT ' + ($line | ConvertTo-Json -Compress))
[Console]::Out.Flush()
exit ([int]$result.Code)
