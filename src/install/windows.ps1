# arc-onboard: installs the Azure Connected Machine agent and connects this machine to Azure Arc.
# Sent through SSM Run Command (AWS-RunPowerShellScript, which saves it as UTF-8 with a byte order mark).
# One text serves a whole batch of instances, so nothing per-instance is below: the instance id is read
# from IMDSv2. Runs on Windows PowerShell 5.1 and PowerShell 7. The parameters are filled in by arc-onboard.
#@ARC_ONBOARD_PARAMETERS@
# End of parameters.

# This text holds the access token: remove the copy SSM saved as _script.ps1 in its orchestration
# directory. PowerShell parsed the whole file before running it, so the rest of the script still runs.
if ($PSCommandPath -and (Test-Path -LiteralPath $PSCommandPath -PathType Leaf)) {
    $header = @(Get-Content -LiteralPath $PSCommandPath -TotalCount 2 -ErrorAction SilentlyContinue)
    if (@($header -match '^# arc-onboard: installs the Azure Connected Machine agent').Count -gt 0) {
        Remove-Item -LiteralPath $PSCommandPath -Force -ErrorAction SilentlyContinue
    }
    Remove-Variable -Name header
}

$ErrorActionPreference = 'Continue'
$ProgressPreference = 'SilentlyContinue'

# Test hooks only: SSM never sets these, so the real endpoint and directory are used on EC2.
$ImdsEndpoint = if ($env:ARC_ONBOARD_IMDS) { $env:ARC_ONBOARD_IMDS } else { 'http://169.254.169.254' }
$LogDir = if ($env:ARC_ONBOARD_LOG_DIR) {
    $env:ARC_ONBOARD_LOG_DIR
} elseif ($env:ProgramData) {
    Join-Path $env:ProgramData 'arc-onboard'
} else {
    Join-Path ([Environment]::GetFolderPath('CommonApplicationData')) 'arc-onboard'
}

$ProgramFiles64 = if ($env:ProgramW6432) { $env:ProgramW6432 } else { $env:ProgramFiles }
$AgentPath = Join-Path $ProgramFiles64 'AzureConnectedMachineAgent\azcmagent.exe'
$SystemRoot = if ($env:SystemRoot) { $env:SystemRoot } else { 'C:\Windows' }
$IcaclsPath = Join-Path $SystemRoot 'System32\icacls.exe'

# The script's own exit codes. Numbers collide with the agent's (1 to 6, AZCM codes) and the installer's,
# so arc-onboard reads every code together with the step of the result line.
$ExitImds = 3
$ExitDownload = 4
$ExitInstall = 5
$ExitUnsupported = 6
$ExitAgentState = 8

$DownloadTimeoutSeconds = 900
$DownloadAttempts = 5
$MaxRedirects = 10
$TailLines = 15
$TailWidth = 200

$script:WorkDir = $null
$script:ConnectConfig = $null
$script:LogReady = $null
$Utf8NoBom = New-Object System.Text.UTF8Encoding($false)

function Write-Log([string]$Text) {
    [Console]::Out.WriteLine('arc-onboard: ' + $Text)
}

# Replaces the access token with a marker in text about to be printed or kept.
function Hide-Token([string]$Text) {
    if ($ARC_ACCESS_TOKEN -and $Text) { return $Text.Replace($ARC_ACCESS_TOKEN, '[redacted]') }
    return $Text
}

# Cuts a string to at most $Width characters.
function Limit-Text([string]$Text, [int]$Width) {
    if ($Text.Length -le $Width) { return $Text }
    return $Text.Substring(0, $Width)
}

# Prints the last lines of a step's output (without the access token), indented and cut short, so that the
# whole output stays small; the full log stays in $LogDir.
function Show-Tail([string]$Text) {
    $lines = @(($Text -split "`r?`n") | Where-Object { $_.Trim() -ne '' })
    foreach ($line in @($lines | Select-Object -Last $TailLines)) {
        # Redact before cutting, so that a cut never leaves a piece of the token behind.
        [Console]::Out.WriteLine('    ' + (Limit-Text (Hide-Token $line) $TailWidth))
    }
}

# Restricts a file or directory to SYSTEM, the Administrators group and the current user, without inherited
# entries (directories pass theirs on to what is created inside). Returns whether icacls succeeded.
function Set-PrivateAccess([string]$Path, [switch]$Container) {
    $inherit = if ($Container) { '(OI)(CI)' } else { '' }
    $arguments = @($Path, '/inheritance:r', '/grant:r', ('*S-1-5-18:' + $inherit + 'F'), ('*S-1-5-32-544:' + $inherit + 'F'))
    $user = [System.Security.Principal.WindowsIdentity]::GetCurrent().User.Value
    if ($user -and $user -ne 'S-1-5-18') { $arguments += ('*' + $user + ':' + $inherit + 'F') }
    $arguments += '/q'
    try {
        $run = Invoke-Process $IcaclsPath $arguments
        return ($run.ExitCode -eq 0)
    } catch {
        return $false
    }
}

# Whether $LogDir can hold the logs: created here, or already there as a real directory (not a junction)
# owned by SYSTEM, the Administrators group or this user (users may create folders in ProgramData).
# Locked down to those three.
function Initialize-LogDir {
    if (-not $LogDir) { return $false }
    try {
        if (Test-Path -LiteralPath $LogDir) {
            $item = Get-Item -LiteralPath $LogDir -Force -ErrorAction Stop
            if (-not $item.PSIsContainer -or ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) {
                Write-Log ('not keeping logs: ' + $LogDir + ' is not a plain directory')
                return $false
            }
            $owner = (Get-Acl -LiteralPath $LogDir -ErrorAction Stop).GetOwner([System.Security.Principal.SecurityIdentifier]).Value
            $user = [System.Security.Principal.WindowsIdentity]::GetCurrent().User.Value
            if (@('S-1-5-18', 'S-1-5-32-544', $user) -notcontains $owner) {
                Write-Log ('not keeping logs: ' + $LogDir + ' belongs to ' + $owner)
                return $false
            }
        } else {
            New-Item -ItemType Directory -Path $LogDir -Force -ErrorAction Stop | Out-Null
        }
        [void](Set-PrivateAccess $LogDir -Container)
        return $true
    } catch {
        Write-Log ('not keeping logs: cannot use ' + $LogDir)
        return $false
    }
}

# Keeps a step's log in $LogDir, without the access token.
function Save-Log([string]$Name, [string]$Text) {
    if ($null -eq $script:LogReady) { $script:LogReady = Initialize-LogDir }
    if (-not $script:LogReady) { return }
    try {
        [System.IO.File]::WriteAllText((Join-Path $LogDir $Name), (Hide-Token $Text), $Utf8NoBom)
    } catch {
        Write-Log ('cannot keep ' + $Name + ' in ' + $LogDir)
    }
}

function New-Result([string]$Outcome, [int]$ExitCode, [string]$Step, [string]$Code, [string]$Message, [string]$ResourceId) {
    return [pscustomobject]@{
        Outcome    = $Outcome
        ExitCode   = $ExitCode
        Step       = $Step
        Code       = $Code
        Message    = $Message
        ResourceId = [string]$ResourceId
    }
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

# Runs a program and captures its output. Both streams are read asynchronously, so a program that fills
# one pipe while we wait on the other cannot deadlock. Returns ExitCode, Output (stdout) and Log (both).
function Invoke-Process([string]$FilePath, [string[]]$Arguments) {
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = $FilePath
    $info.Arguments = (@($Arguments | ForEach-Object { ConvertTo-WindowsArgument $_ }) -join ' ')
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    $info.RedirectStandardInput = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $info.StandardOutputEncoding = $Utf8NoBom
    $info.StandardErrorEncoding = $Utf8NoBom
    $process = [System.Diagnostics.Process]::Start($info)
    try {
        $process.StandardInput.Close()
        $stdoutTask = $process.StandardOutput.ReadToEndAsync()
        $stderrTask = $process.StandardError.ReadToEndAsync()
        $process.WaitForExit()
        # A grandchild that inherited the pipes may keep them open: do not wait for it forever.
        $stdout = if ($stdoutTask.Wait(60000)) { $stdoutTask.Result } else { '(output still open after exit)' }
        $stderr = if ($stderrTask.Wait(60000)) { $stderrTask.Result } else { '(output still open after exit)' }
        $log = $stdout
        if ($stderr) { $log = $log + "`n" + $stderr }
        return [pscustomobject]@{ ExitCode = $process.ExitCode; Output = $stdout; Log = $log }
    } finally {
        $process.Dispose()
    }
}

function Invoke-Agent([string[]]$Arguments) {
    return (Invoke-Process $AgentPath $Arguments)
}

# The string value of Key in the text of `azcmagent show -j`, for output that is not clean JSON.
function Get-ShowField([string]$Text, [string]$Key) {
    $match = [regex]::Match($Text, '"' + [regex]::Escape($Key) + '"\s*:\s*"([^"]*)"')
    if ($match.Success) { return $match.Groups[1].Value }
    return ''
}

# The agent's status and the resource it is connected to, from `azcmagent show -j`.
function Read-AgentState {
    $state = [pscustomobject]@{ Status = ''; SubscriptionId = ''; ResourceGroup = ''; ResourceName = '' }
    try {
        $shown = [string](Invoke-Agent @('show', '-j')).Output
    } catch {
        return $state
    }
    $parsed = $null
    try {
        $parsed = $shown | ConvertFrom-Json -ErrorAction Stop
    } catch {
        $parsed = $null
    }
    if ($null -ne $parsed -and $parsed -isnot [string]) {
        $state.Status = [string]$parsed.status
        $state.SubscriptionId = [string]$parsed.subscriptionId
        $state.ResourceGroup = [string]$parsed.resourceGroup
        $state.ResourceName = [string]$parsed.resourceName
    } else {
        $state.Status = Get-ShowField $shown 'status'
        $state.SubscriptionId = Get-ShowField $shown 'subscriptionId'
        $state.ResourceGroup = Get-ShowField $shown 'resourceGroup'
        $state.ResourceName = Get-ShowField $shown 'resourceName'
    }
    return $state
}

function Get-AgentResourceId($State) {
    return ('/subscriptions/' + $State.SubscriptionId + '/resourceGroups/' + $State.ResourceGroup +
        '/providers/Microsoft.HybridCompute/machines/' + $State.ResourceName)
}

function Test-SameName([string]$A, [string]$B) {
    return [string]::Equals($A, $B, [System.StringComparison]::OrdinalIgnoreCase)
}

# The result when the agent already belongs to a resource: ours and Connected (nothing to do), another one
# (left alone), or Disconnected/Expired (its owner must reconnect or disconnect it). $null when the agent
# was never connected.
function Get-ExistingConnectionResult($State, [string]$InstanceId) {
    if (-not ($State.ResourceName + $State.ResourceGroup) -and $State.Status -ne 'Connected') {
        return $null
    }
    $resourceId = Get-AgentResourceId $State
    if ($State.Status -eq 'Connected') {
        if ((Test-SameName $State.SubscriptionId $ARC_SUBSCRIPTION_ID) -and
            (Test-SameName $State.ResourceGroup $ARC_RESOURCE_GROUP) -and
            (Test-SameName $State.ResourceName $InstanceId)) {
            Write-Log 'the agent is already connected to this resource; nothing to do'
            return (New-Result 'already-connected' 0 'check' 'already-connected' ('already connected as ' + $resourceId) $resourceId)
        }
        if (-not $State.ResourceName) {
            return (New-Result 'connected-elsewhere' 0 'check' 'connected-elsewhere' 'the agent is connected to a resource it does not name; left alone' '')
        }
        Write-Log ('the agent is connected to another resource: ' + $resourceId + '; left alone')
        return (New-Result 'connected-elsewhere' 0 'check' 'connected-elsewhere' ('connected to another Arc resource: ' + $resourceId + '; left alone') $resourceId)
    }
    if ($State.Status -eq 'Disconnected' -or $State.Status -eq 'Expired') {
        $message = 'the agent is ' + $State.Status + ' from ' + $resourceId +
            ": run 'azcmagent reconnect' there, or have its owner disconnect it; arc-onboard does neither"
        return (New-Result 'failed' $ExitAgentState 'check' ('agent-' + $State.Status.ToLowerInvariant()) $message $resourceId)
    }
    $message = "the agent reports status '" + $State.Status + "' for " + $resourceId + '; left alone'
    return (New-Result 'failed' $ExitAgentState 'check' 'agent-state' $message $resourceId)
}

# reconnect-agent: whether the agent may be disconnected locally and connected anew (see step 2).
function Test-NeedsReconnect($State, [string]$InstanceId) {
    if ($ARC_RECONNECT -ne '1' -or -not (Test-SameName $State.SubscriptionId $ARC_SUBSCRIPTION_ID) -or
        -not (Test-SameName $State.ResourceGroup $ARC_RESOURCE_GROUP)) {
        return $false
    }
    if ($State.Status -eq 'Expired' -or $State.Status -eq 'Disconnected') { return [bool]$State.ResourceName }
    return ($State.Status -eq 'Connected' -and $State.ResourceName -and -not (Test-SameName $State.ResourceName $InstanceId))
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
            $request.ReadWriteTimeout = 10000
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

# An error that retrying cannot fix (a refused URL scheme, too many redirects).
function New-PermanentError([string]$Message) {
    $exception = New-Object System.Exception($Message)
    $exception.Data['ArcOnboardPermanent'] = $true
    return $exception
}

# The WebException behind an error record (PowerShell wraps exceptions thrown by .NET methods).
function Get-WebException($ErrorRecord) {
    $exception = $ErrorRecord.Exception
    while ($null -ne $exception -and $exception -isnot [System.Net.WebException]) {
        $exception = $exception.InnerException
    }
    return $exception
}

# Downloads Url to Path, following at most $MaxRedirects redirects itself so that every hop's scheme is
# checked against $ARC_DOWNLOAD_PROTOCOLS (https only, unless the installer URL itself is plain http on a
# loopback host). Goes through $ARC_PROXY_URL when set. Throws on failure.
function Save-Download([string]$Url, [string]$Path, [string[]]$Schemes) {
    $clock = [System.Diagnostics.Stopwatch]::StartNew()
    try {
        $current = New-Object System.Uri($Url)
    } catch {
        throw (New-PermanentError ('not a valid URL: ' + (Limit-Text $Url $TailWidth)))
    }
    for ($hop = 0; $hop -le $MaxRedirects; $hop++) {
        $scheme = $current.Scheme.ToLowerInvariant()
        if ($Schemes -notcontains $scheme) {
            $what = 'refusing to download over ' + $scheme + ' (only ' + ($Schemes -join ', ') + ' allowed): ' + $current.AbsoluteUri
            throw (New-PermanentError (Limit-Text $what 300))
        }
        $request = [System.Net.WebRequest]::Create($current)
        $request.Method = 'GET'
        $request.AllowAutoRedirect = $false
        $request.Timeout = 60000
        $request.ReadWriteTimeout = 120000
        $request.UserAgent = 'arc-onboard'
        if ($ARC_PROXY_URL) { $request.Proxy = New-Object System.Net.WebProxy($ARC_PROXY_URL) }
        $response = $null
        try {
            $response = $request.GetResponse()
        } catch {
            # Some .NET versions throw for a redirect that is not followed automatically.
            $webError = Get-WebException $_
            if ($null -ne $webError -and $null -ne $webError.Response) {
                $status = [int]$webError.Response.StatusCode
                if ($status -ge 300 -and $status -lt 400) {
                    $response = $webError.Response
                } else {
                    $webError.Response.Close()
                    $failure = New-Object System.Exception(('HTTP ' + $status + ' from ' + $current.AbsoluteUri))
                    if ($status -ge 400 -and $status -lt 500 -and $status -ne 408 -and $status -ne 429) {
                        $failure.Data['ArcOnboardPermanent'] = $true
                    }
                    throw $failure
                }
            } else {
                throw
            }
        }
        try {
            $status = [int]$response.StatusCode
            if ($status -ge 300 -and $status -lt 400) {
                $location = $response.Headers['Location']
                if (-not $location) { throw (New-PermanentError ('HTTP ' + $status + ' without a Location header')) }
                $current = New-Object System.Uri($current, $location)
                continue
            }
            if ($status -ne 200) { throw ('HTTP ' + $status + ' from ' + $current.AbsoluteUri) }
            $stream = $response.GetResponseStream()
            $file = [System.IO.File]::Create($Path)
            try {
                $buffer = New-Object byte[] 65536
                while (($read = $stream.Read($buffer, 0, $buffer.Length)) -gt 0) {
                    $file.Write($buffer, 0, $read)
                    if ($clock.Elapsed.TotalSeconds -gt $DownloadTimeoutSeconds) {
                        throw ('the download took longer than ' + $DownloadTimeoutSeconds + ' seconds')
                    }
                }
            } finally {
                $file.Close()
                $stream.Close()
            }
            return
        } finally {
            $response.Close()
        }
    }
    throw (New-PermanentError ('more than ' + $MaxRedirects + ' redirects'))
}

function Invoke-Onboarding {
    # Platform prerequisites of the agent.
    if (-not [Environment]::Is64BitProcess) {
        return (New-Result 'failed' $ExitUnsupported 'platform' 'unsupported-platform' 'not running in 64-bit PowerShell (the agent requires it)' '')
    }

    # 1. The instance id (the Arc resource name), from IMDSv2, never through the proxy.
    Write-Log 'reading the instance id from IMDSv2'
    try {
        $imdsToken = Invoke-Imds 'PUT' '/latest/api/token' @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '300' }
    } catch {
        return (New-Result 'failed' $ExitImds 'imds' 'imds-unavailable' ('cannot get an IMDSv2 token: ' + $_.Exception.Message) '')
    }
    if (-not $imdsToken) {
        return (New-Result 'failed' $ExitImds 'imds' 'imds-unavailable' 'cannot get an IMDSv2 token' '')
    }
    try {
        $instanceId = Invoke-Imds 'GET' '/latest/meta-data/instance-id' @{ 'X-aws-ec2-metadata-token' = $imdsToken }
    } catch {
        return (New-Result 'failed' $ExitImds 'imds' 'imds-unavailable' ('cannot read the instance id from IMDSv2: ' + $_.Exception.Message) '')
    }
    if ($instanceId -cnotmatch '^i-[0-9a-f]{8,17}$') {
        return (New-Result 'failed' $ExitImds 'imds' 'imds-unavailable' 'IMDSv2 returned an invalid instance id' '')
    }
    Write-Log ('instance id: ' + $instanceId)

    # 2. Already connected? Only to our resource counts; another one is left alone. reconnect-agent
    # ($ARC_RECONNECT = '1'): an agent of our subscription and resource group that is Expired,
    # Disconnected, or Connected under another instance's name (a clone) is disconnected locally only
    # (its Arc resource stays), then connected below as a fresh install would.
    $reconnectedFrom = ''
    if (Test-Path -LiteralPath $AgentPath -PathType Leaf) {
        $state = Read-AgentState
        if (Test-NeedsReconnect $state $instanceId) {
            $reconnectedFrom = Get-AgentResourceId $state
            Write-Log ('reconnect: the agent is ' + $state.Status + ' as ' + $reconnectedFrom + '; disconnecting it locally')
            $off = Invoke-Agent @('disconnect', '--force-local-only')
            Save-Log 'disconnect.log' $off.Log
            if ($off.ExitCode -ne 0) {
                Show-Tail $off.Log
                return (New-Result 'failed' $off.ExitCode 'connect' 'disconnect-failed' ('azcmagent disconnect --force-local-only exited with ' + $off.ExitCode) $reconnectedFrom)
            }
        } else {
            $existing = Get-ExistingConnectionResult $state $instanceId
            if ($existing) { return $existing }
        }
    }

    # 3. Download the installer (checked against its pin) into a private directory, and run it.
    try {
        [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    } catch {
        Write-Log 'cannot enable TLS 1.2 explicitly; using the defaults'
    }
    # A random name nobody else can list (the system temp directory is not listable by users), locked
    # down right after it is created and checked to be still empty.
    $workDir = Join-Path ([System.IO.Path]::GetTempPath()) ('arc-onboard-' + [guid]::NewGuid().ToString('N'))
    try {
        New-Item -ItemType Directory -Path $workDir -ErrorAction Stop | Out-Null
        $script:WorkDir = $workDir
    } catch {
        return (New-Result 'failed' $ExitDownload 'download' 'download-failed' 'cannot create a temporary directory' '')
    }
    if (-not (Set-PrivateAccess $workDir -Container) -or @(Get-ChildItem -LiteralPath $workDir -Force).Count -ne 0) {
        return (New-Result 'failed' $ExitDownload 'download' 'download-failed' 'cannot make the temporary directory private' '')
    }
    $installer = Join-Path $workDir 'install_windows_azcmagent.ps1'
    $installerArguments = @()
    if ($ARC_PROXY_URL) {
        $installerArguments = @('-Proxy', $ARC_PROXY_URL)
        Write-Log ('using proxy ' + $ARC_PROXY_URL)
    }
    $schemes = @($ARC_DOWNLOAD_PROTOCOLS.TrimStart('=').Split(',') | ForEach-Object { $_.Trim().ToLowerInvariant() } | Where-Object { $_ })
    if ($schemes.Count -eq 0) { $schemes = @('https') }

    Write-Log ('downloading the agent installer from ' + $ARC_INSTALLER_URL)
    $downloadLog = New-Object System.Text.StringBuilder
    $downloaded = $false
    $downloadError = ''
    for ($attempt = 1; $attempt -le $DownloadAttempts -and -not $downloaded; $attempt++) {
        try {
            Save-Download $ARC_INSTALLER_URL $installer $schemes
            $downloaded = $true
        } catch {
            $downloadError = $_.Exception.Message
            [void]$downloadLog.AppendLine('attempt ' + $attempt + ': ' + $downloadError)
            if ($_.Exception.Data['ArcOnboardPermanent']) { break }
            if ($attempt -lt $DownloadAttempts) { Start-Sleep -Seconds 3 }
        }
    }
    if (-not $downloaded) {
        Show-Tail $downloadLog.ToString()
        Save-Log 'download.log' $downloadLog.ToString()
        return (New-Result 'failed' $ExitDownload 'download' 'download-failed' ('cannot download the agent installer from ' + $ARC_INSTALLER_URL + ': ' + $downloadError) '')
    }
    if ($ARC_INSTALLER_SHA256) {
        try {
            $actual = (Get-FileHash -LiteralPath $installer -Algorithm SHA256 -ErrorAction Stop).Hash
        } catch {
            return (New-Result 'failed' $ExitDownload 'download' 'checksum-unavailable' ('cannot compute the SHA-256 of the installer, so the pin cannot be checked; it was not run: ' + $_.Exception.Message) '')
        }
        if (-not (Test-SameName $actual $ARC_INSTALLER_SHA256)) {
            $message = "the installer's SHA-256 is " + $actual.ToLowerInvariant() + ', not the pinned ' + $ARC_INSTALLER_SHA256 + '; it was not run'
            return (New-Result 'failed' $ExitDownload 'download' 'checksum-mismatch' $message '')
        }
        Write-Log 'installer SHA-256 matches the pin'
    }

    # The installer runs in its own PowerShell process (the same edition as this one): its exit code and
    # whatever it prints are its own, and it cannot see this script's variables.
    Write-Log 'running the agent installer'
    $shell = if ($PSVersionTable.PSEdition -eq 'Core') { Join-Path $PSHOME 'pwsh.exe' } else { Join-Path $PSHOME 'powershell.exe' }
    $install = Invoke-Process $shell (@('-NoLogo', '-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', $installer) + $installerArguments)
    Save-Log 'installer.log' $install.Log
    if ($install.ExitCode -ne 0) {
        Show-Tail $install.Log
        return (New-Result 'failed' $install.ExitCode 'install' 'installer-failed' ('the agent installer exited with ' + $install.ExitCode) '')
    }
    if (-not (Test-Path -LiteralPath $AgentPath -PathType Leaf)) {
        Show-Tail $install.Log
        return (New-Result 'failed' $ExitInstall 'install' 'agent-missing' 'azcmagent.exe is missing after the installation' '')
    }
    Write-Log ('agent installed: ' + $AgentPath)

    # The agent's proxy: set it in proxy mode; in public mode clear one an earlier proxy install left behind.
    if ($ARC_PROXY_URL) {
        $config = Invoke-Agent @('config', 'set', 'proxy.url', $ARC_PROXY_URL)
        Save-Log 'config.log' $config.Log
        if ($config.ExitCode -ne 0) {
            Show-Tail $config.Log
            return (New-Result 'failed' $config.ExitCode 'proxy-config' 'agent-config-failed' ('azcmagent config set proxy.url exited with ' + $config.ExitCode) '')
        }
    } elseif ((Invoke-Agent @('config', 'get', 'proxy.url')).Output -match 'https?://') {
        Write-Log 'clearing the proxy.url an earlier install left (connectivity is public)'
        $config = Invoke-Agent @('config', 'clear', 'proxy.url')
        Save-Log 'config.log' $config.Log
        if ($config.ExitCode -ne 0) {
            Show-Tail $config.Log
            return (New-Result 'failed' $config.ExitCode 'proxy-config' 'agent-config-failed' ('azcmagent config clear proxy.url exited with ' + $config.ExitCode) '')
        }
    }

    # 4. Connect. The token goes through a private --config file, never on the command line.
    $connect = @('connect',
        '--subscription-id', $ARC_SUBSCRIPTION_ID,
        '--resource-group', $ARC_RESOURCE_GROUP,
        '--location', $ARC_LOCATION,
        '--tenant-id', $ARC_TENANT_ID,
        '--cloud', $ARC_CLOUD)
    if ($ARC_CORRELATION_ID) { $connect += @('--correlation-id', $ARC_CORRELATION_ID) }
    if ($ARC_TAGS) { $connect += @('--tags', $ARC_TAGS) }
    $configPath = Join-Path $workDir 'connect.json'
    try {
        # Created empty and locked down before the token is written into it.
        [System.IO.File]::WriteAllText($configPath, '', $Utf8NoBom)
        $script:ConnectConfig = $configPath
        if (-not (Set-PrivateAccess $configPath)) { throw 'icacls failed' }
        $configJson = [ordered]@{ 'access-token' = $ARC_ACCESS_TOKEN } | ConvertTo-Json -Compress
        [System.IO.File]::WriteAllText($configPath, $configJson, $Utf8NoBom)
    } catch {
        return (New-Result 'failed' $ExitInstall 'connect' 'connect-config' 'cannot write the private connect configuration file' '')
    }
    $connect += @('--resource-name', $instanceId, '--config', $configPath)

    Write-Log ('connecting to Azure Arc as ' + $instanceId)
    try {
        $run = Invoke-Agent $connect
    } finally {
        Remove-Item -LiteralPath $configPath -Force -ErrorAction SilentlyContinue
        $script:ConnectConfig = $null
    }
    Save-Log 'connect.log' $run.Log

    # 5. The result.
    if ($run.ExitCode -eq 0) {
        if ($reconnectedFrom) {
            return (New-Result 'connected' 0 'connect' 'reconnected' ('reconnected as ' + $instanceId + ' (the agent was disconnected locally from ' + $reconnectedFrom + ')') '')
        }
        return (New-Result 'connected' 0 'connect' 'connected' ('connected as ' + $instanceId) '')
    }
    if ($run.ExitCode -eq 67) {
        # "Already connected": to which resource, and in what state?
        $existing = Get-ExistingConnectionResult (Read-AgentState) $instanceId
        if ($existing) { return $existing }
        return (New-Result 'failed' 67 'connect' 'AZCM0067' 'azcmagent connect says the machine is already connected, but azcmagent show names no resource' '')
    }
    Show-Tail $run.Log
    $detail = ''
    $azcm = [regex]::Matches((Hide-Token $run.Log), 'AZCM\d{4}[^\r\n]*')
    if ($azcm.Count -gt 0) { $detail = Limit-Text $azcm[$azcm.Count - 1].Value 300 }
    $code = if ($detail) { $detail.Substring(0, 8) } else { 'exit-' + $run.ExitCode }
    $message = 'azcmagent connect exited with ' + $run.ExitCode
    if ($detail) { $message = $message + ': ' + $detail }
    return (New-Result 'failed' $run.ExitCode 'connect' $code $message '')
}

try {
    # The last object is the result (guards against stray output in the function's pipeline).
    $result = Invoke-Onboarding | Select-Object -Last 1
    if ($null -eq $result -or $null -eq $result.PSObject.Properties['Outcome']) {
        $result = New-Result 'failed' 1 'unexpected' 'unexpected' 'the onboarding ended without a result' ''
    }
} catch {
    $result = New-Result 'failed' 1 'unexpected' 'unexpected' $_.Exception.Message ''
} finally {
    if ($script:ConnectConfig) { Remove-Item -LiteralPath $script:ConnectConfig -Force -ErrorAction SilentlyContinue }
    if ($script:WorkDir) { Remove-Item -LiteralPath $script:WorkDir -Recurse -Force -ErrorAction SilentlyContinue }
}

# 6. The result line, last. Characters outside ASCII are escaped, so the line survives any console code page.
$line = [ordered]@{
    outcome     = [string]$result.Outcome
    exit_code   = [int]$result.ExitCode
    step        = [string]$result.Step
    code        = [string]$result.Code
    message     = (Hide-Token ([string]$result.Message))
    resource_id = (Hide-Token ([string]$result.ResourceId))
}
$json = New-Object System.Text.StringBuilder
foreach ($c in ($line | ConvertTo-Json -Compress).ToCharArray()) {
    if ([int]$c -gt 126) { [void]$json.AppendFormat('\u{0:x4}', [int]$c) } else { [void]$json.Append($c) }
}
[Console]::Out.WriteLine('ARC_ONBOARD_RESULT ' + $json.ToString())
[Console]::Out.Flush()
exit ([int]$result.ExitCode)
