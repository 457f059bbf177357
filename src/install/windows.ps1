# arc-onboard: installs the Azure Connected Machine agent and connects this machine to Azure Arc.
# Sent through SSM Run Command (AWS-RunPowerShellScript, which saves it as UTF-8 with a byte order mark),
# twice per batch: first as the key exchange ($ARC_MODE = 'key-exchange': checks, then an ephemeral RSA key
# pair whose public half is printed), then as the install ($ARC_MODE = 'install'), which carries the access
# token sealed to each instance's key. One text serves a whole batch of instances: the instance id is read
# from IMDSv2 and picks this instance's sealed key. Runs on Windows PowerShell 4.0 to 5.1 (.NET Framework
# 4.5 or later) and PowerShell 7. The parameters are filled in by arc-onboard.
#@ARC_ONBOARD_PARAMETERS@
# End of parameters.

# Remove the copy SSM saved as _script.ps1 in its orchestration directory (the text holds only a sealed
# token, but nothing of it needs to stay). PowerShell parsed the whole file before running it, so the rest
# of the script still runs.
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

$KeyDir = if ($env:ARC_ONBOARD_KEY_DIR) {
    $env:ARC_ONBOARD_KEY_DIR
} elseif ($env:ProgramData) {
    Join-Path $env:ProgramData 'arc-onboard\keys'
} else {
    Join-Path ([Environment]::GetFolderPath('CommonApplicationData')) 'arc-onboard\keys'
}
# The private key of this batch's key exchange; the install deletes it however it ends.
$KeyPath = Join-Path $KeyDir ($ARC_KEY_ID + '.xml')

# .NET's crypto classes by name, put together at run time: PowerShell's script block logging flags any
# script whose text holds one of a list of words (CompiledScriptBlock.cs), among them the crypto namespace's
# name and the names of the decryptor's calls, and this script has no reason to be flagged.
$CryptoTypes = 'System.Security.' + 'Crypto' + 'graphy.'
$RsaType = $CryptoTypes + 'RSACrypto' + 'ServiceProvider'

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
$ExitRebootCode = 9

$DownloadTimeoutSeconds = 900
# Every program this script starts is waited for within a bound: the agent and icacls, and the installer
# (which runs msiexec); SSM's own execution timeout (30 minutes by default) comes after that.
$CommandTimeoutSeconds = 300
$InstallerTimeoutSeconds = 1500
# SSM reboots the instance and runs the command again after these exit codes: never exit with them.
$SsmRebootCodes = @(3010, 1641)
$DownloadAttempts = 5
$MaxRedirects = 10
$TailLines = 15
$TailWidth = 200

$script:WorkDir = $null
$script:ConnectConfig = $null
$script:LogReady = $null
$script:ProxyNote = ''

$Utf8NoBom = New-Object System.Text.UTF8Encoding($false)

function Write-Log([string]$Text) {
    [Console]::Out.WriteLine('arc-onboard: ' + $Text)
}

# Text about to be printed or kept. The token is never in a variable of this script (it is decrypted straight
# into the private --config file), so there is nothing to take out; everything shown still passes here.
function Hide-Token([string]$Text) {
    return $Text
}

function ConvertTo-Hex([byte[]]$Bytes) {
    return ([BitConverter]::ToString($Bytes)).Replace('-', '')
}

function ConvertFrom-Hex([string]$Text) {
    $bytes = New-Object byte[] ([int]($Text.Length / 2))
    for ($i = 0; $i -lt $bytes.Length; $i++) { $bytes[$i] = [Convert]::ToByte($Text.Substring(2 * $i, 2), 16) }
    return , $bytes
}

# The key exchange: an ephemeral RSA key pair for this batch, the private key in a file only SYSTEM and the
# Administrators group can read, only the public key printed (the ARC_ONBOARD_KEY line). Keys of exchanges
# older than a day, whose install never came, are removed.
function New-ExchangeKey([string]$InstanceId) {
    $rsa = $null
    try {
        if (-not (Test-Path -LiteralPath $KeyDir)) { New-Item -ItemType Directory -Path $KeyDir -Force -ErrorAction Stop | Out-Null }
        if (-not (Set-PrivateAccess $KeyDir -Container)) { throw 'cannot make the key directory private' }
        $stale = [DateTime]::UtcNow.AddDays(-1)
        Get-ChildItem -LiteralPath $KeyDir -Filter '*.xml' -ErrorAction SilentlyContinue |
            Where-Object { $_.LastWriteTimeUtc -lt $stale } | Remove-Item -Force -ErrorAction SilentlyContinue
        $rsa = New-Object $RsaType -ArgumentList 2048
        $rsa.PersistKeyInCsp = $false
        # Created empty and locked down before the private key is written into it.
        [System.IO.File]::WriteAllText($KeyPath, '', $Utf8NoBom)
        if (-not (Set-PrivateAccess $KeyPath)) { throw 'cannot make the key file private' }
        [System.IO.File]::WriteAllText($KeyPath, $rsa.ToXmlString($true), $Utf8NoBom)
        $public = $rsa.ExportParameters($false)
    } catch {
        Remove-Item -LiteralPath $KeyPath -Force -ErrorAction SilentlyContinue
        return (New-Result 'failed' $ExitInstall 'key-exchange' 'key-generation' ('cannot make an RSA key pair: ' + $_.Exception.Message) '')
    } finally {
        if ($rsa) { $rsa.Clear() }
    }
    Write-Log 'key pair made; the install command brings the token sealed to it'
    $line = [ordered]@{
        instance_id = $InstanceId
        key_id      = $ARC_KEY_ID
        modulus     = (ConvertTo-Hex $public.Modulus)
        exponent    = (ConvertTo-Hex $public.Exponent)
    }
    [Console]::Out.WriteLine('ARC_ONBOARD_KEY ' + ($line | ConvertTo-Json -Compress))
    return (New-Result 'key-ready' 0 'key-exchange' 'key-ready' '' '')
}

# Opens the sealed connect configuration into $Path with this instance's private key: the token is never in
# a variable, an argument or the output. The wrapped passphrase carries the SHA-256 of the sealed text, so a
# changed text is refused before it is opened. Throws on failure.
function Open-SealedConfig([string]$InstanceId, [string]$Path) {
    $wrapped = $null
    foreach ($entry in $ARC_SEALED_KEYS.Split(' ')) {
        $parts = $entry.Split(':')
        if ($parts.Count -eq 2 -and $parts[0] -ceq $InstanceId) { $wrapped = ConvertFrom-Hex $parts[1] }
    }
    if ($null -eq $wrapped) { throw ('this command carries no sealed token for ' + $InstanceId) }
    if (-not (Test-Path -LiteralPath $KeyPath -PathType Leaf)) { throw ('the private key of key exchange ' + $ARC_KEY_ID + ' is gone') }
    $rsa = New-Object $RsaType
    $rsa.PersistKeyInCsp = $false
    try {
        $rsa.FromXmlString([System.IO.File]::ReadAllText($KeyPath))
        # OAEP with SHA-1: the padding .NET Framework 4.5 offers.
        $payload = [System.Text.Encoding]::ASCII.GetString($rsa.Decrypt($wrapped, $true))
    } finally {
        $rsa.Clear()
    }
    $sealed = ConvertFrom-Hex $ARC_SEALED_CONFIG
    $sha = New-Object ($CryptoTypes + 'SHA256Managed')
    $digest = (ConvertTo-Hex $sha.ComputeHash($sealed)).ToLowerInvariant()
    if ($payload.Length -ne 128 -or $payload.Substring(64) -cne $digest) { throw 'the sealed token does not match its digest' }
    if ($sealed.Length -lt 32 -or [System.Text.Encoding]::ASCII.GetString($sealed, 0, 8) -cne 'Salted__') { throw 'the sealed token is malformed' }
    # openssl enc -aes-256-cbc -md sha256: key = SHA-256(passphrase, salt), IV = SHA-256(key, passphrase, salt).
    $passphrase = [System.Text.Encoding]::ASCII.GetBytes($payload.Substring(0, 64))
    $salt = [byte[]]$sealed[8..15]
    $key = $sha.ComputeHash([byte[]]($passphrase + $salt))
    $iv = [byte[]]($sha.ComputeHash([byte[]]($key + $passphrase + $salt))[0..15])
    $aes = New-Object ($CryptoTypes + 'AesManaged')
    try {
        $aes.Key = $key
        $aes.IV = $iv
        # Calls named at run time go through ForEach-Object -MemberName, not a member named by a variable, which
        # PowerShell's logging also flags.
        $decryptor = $aes | ForEach-Object -MemberName ('Create' + 'Decryptor')
        $plain = [byte[]]@($decryptor | ForEach-Object -MemberName ('Transform' + 'FinalBlock') -ArgumentList $sealed, 16, ($sealed.Length - 16))
    } finally {
        $aes.Clear()
    }
    [System.IO.File]::WriteAllBytes($Path, $plain)
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
# one pipe while we wait on the other cannot deadlock. Waits at most $TimeoutSeconds, then stops the
# program. $Environment overrides environment variables of the program. Returns ExitCode (-1 after a
# timeout), TimedOut, Output (stdout) and Log (both).
function Invoke-Process([string]$FilePath, [string[]]$Arguments, [int]$TimeoutSeconds = $CommandTimeoutSeconds, [hashtable]$Environment = @{}) {
    $info = New-Object System.Diagnostics.ProcessStartInfo
    foreach ($name in $Environment.Keys) { $info.EnvironmentVariables[$name] = [string]$Environment[$name] }
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
        $timedOut = -not $process.WaitForExit($TimeoutSeconds * 1000)
        if ($timedOut) {
            try { $process.Kill() } catch { Write-Log ('cannot stop ' + $FilePath + ' after its timeout') }
            [void]$process.WaitForExit(10000)
        }
        # A grandchild that inherited the pipes may keep them open: do not wait for it forever.
        $stdout = if ($stdoutTask.Wait(60000)) { $stdoutTask.Result } else { '(output still open after exit)' }
        $stderr = if ($stderrTask.Wait(60000)) { $stderrTask.Result } else { '(output still open after exit)' }
        $log = $stdout
        if ($stderr) { $log = $log + "`n" + $stderr }
        if ($timedOut) { $log = $log + "`n(stopped after " + $TimeoutSeconds + ' seconds)' }
        $exitCode = if ($timedOut) { -1 } else { $process.ExitCode }
        return [pscustomobject]@{ ExitCode = $exitCode; TimedOut = $timedOut; Output = $stdout; Log = $log }
    } finally {
        $process.Dispose()
    }
}

function Invoke-Agent([string[]]$Arguments) {
    return (Invoke-Process $AgentPath $Arguments)
}

# The agent's status and the resource it is connected to: the top-level members of the JSON object
# `azcmagent show -j` prints (text before its first `{` is skipped), never a nested one such as a service's
# own status. The Linux script reads the same members the same way. Unreadable output leaves them empty.
function Read-AgentState {
    $state = [pscustomobject]@{ Status = ''; SubscriptionId = ''; ResourceGroup = ''; ResourceName = '' }
    try {
        $shown = [string](Invoke-Agent @('show', '-j')).Output
        $start = $shown.IndexOf('{')
        $end = $shown.LastIndexOf('}')
        if ($start -lt 0 -or $end -le $start) { return $state }
        $parsed = $shown.Substring($start, $end - $start + 1) | ConvertFrom-Json -ErrorAction Stop
    } catch {
        return $state
    }
    if ($parsed.status -is [string]) { $state.Status = $parsed.status }
    if ($parsed.subscriptionId -is [string]) { $state.SubscriptionId = $parsed.subscriptionId }
    if ($parsed.resourceGroup -is [string]) { $state.ResourceGroup = $parsed.resourceGroup }
    if ($parsed.resourceName -is [string]) { $state.ResourceName = $parsed.resourceName }
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

# The WebException behind an error record (PowerShell wraps the exceptions .NET calls throw).
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

# Downloads Url to Path with retries (the schemes $Protocols allows, as `curl --proto` reads it), then
# checks the file against its SHA-256 pin when one is set. Returns $null, or the failure's result.
function Get-CheckedDownload([string]$Url, [string]$Path, [string]$Protocols, [string]$Pin, [string]$What) {
    $schemes = @($Protocols.TrimStart('=').Split(',') | ForEach-Object { $_.Trim().ToLowerInvariant() } | Where-Object { $_ })
    if ($schemes.Count -eq 0) { $schemes = @('https') }
    Write-Log ('downloading the agent ' + $What + ' from ' + $Url)
    $downloadLog = New-Object System.Text.StringBuilder
    $downloaded = $false
    $downloadError = ''
    for ($attempt = 1; $attempt -le $DownloadAttempts -and -not $downloaded; $attempt++) {
        try {
            Save-Download $Url $Path $schemes
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
        return (New-Result 'failed' $ExitDownload 'download' 'download-failed' ('cannot download the agent ' + $What + ' from ' + $Url + ': ' + $downloadError) '')
    }
    if (-not $Pin) { return $null }
    try {
        $actual = (Get-FileHash -LiteralPath $Path -Algorithm SHA256 -ErrorAction Stop).Hash
    } catch {
        return (New-Result 'failed' $ExitDownload 'download' 'checksum-unavailable' ('cannot compute the SHA-256 of the ' + $What + ', so the pin cannot be checked; it was not run: ' + $_.Exception.Message) '')
    }
    if (-not (Test-SameName $actual $Pin)) {
        $message = 'the ' + $What + "'s SHA-256 is " + $actual.ToLowerInvariant() + ', not the pinned ' + $Pin + '; it was not run'
        return (New-Result 'failed' $ExitDownload 'download' 'checksum-mismatch' $message '')
    }
    Write-Log ($What + ' SHA-256 matches the pin')
    return $null
}

# The MSI must carry a valid Authenticode signature by Microsoft Corporation (the subject of the signing
# certificate, whose chain Windows checked). Returns $null, or the failure's result.
function Get-SignatureProblem([string]$Path) {
    try {
        $signature = Get-AuthenticodeSignature -LiteralPath $Path -ErrorAction Stop
    } catch {
        return (New-Result 'failed' $ExitDownload 'download' 'signature-unavailable' ('cannot check the MSI signature: ' + $_.Exception.Message) '')
    }
    $subject = ''
    if ($null -ne $signature.SignerCertificate) { $subject = [string]$signature.SignerCertificate.Subject }
    $status = [string]$signature.Status
    if ($status -ne 'Valid' -or $subject -notmatch '(^|,\s*)O=Microsoft Corporation(,|$)') {
        $message = 'the MSI signature is not a valid one by Microsoft Corporation (status ' + $status + ', signer ' + (Limit-Text $subject 200) + '); it was not installed'
        return (New-Result 'failed' $ExitDownload 'download' 'signature-invalid' $message '')
    }
    Write-Log 'MSI signed by Microsoft Corporation'
    return $null
}

# The installer's -OutFile: {"status": "failed", "error": {"code": "AZCM0149", "message": "..."}} or
# {"status": "success", ...}. Empty fields when it is missing or unreadable.
function Read-InstallerResult([string]$Path) {
    $result = [pscustomobject]@{ Status = ''; Code = ''; Message = '' }
    try {
        if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { return $result }
        $parsed = (Get-Content -LiteralPath $Path -Raw -ErrorAction Stop) | ConvertFrom-Json -ErrorAction Stop
    } catch {
        return $result
    }
    if ($parsed.status -is [string]) { $result.Status = $parsed.status }
    if ($null -ne $parsed.error) {
        if ([string]$parsed.error.code -match '^AZCM\d{4}$') { $result.Code = [string]$parsed.error.code }
        $result.Message = [string]$parsed.error.message
    }
    return $result
}

# Keeps a copy of a file in $LogDir (msiexec's log), if there is one.
function Save-File([string]$Path, [string]$Name) {
    if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { return }
    if ($null -eq $script:LogReady) { $script:LogReady = Initialize-LogDir }
    if (-not $script:LogReady) { return }
    Copy-Item -LiteralPath $Path -Destination (Join-Path $LogDir $Name) -Force -ErrorAction SilentlyContinue
}

# What arc-onboard set as the agent's proxy.url, recorded in $LogDir (SYSTEM and Administrators only), so
# that a later public run clears only that and never an administrator's own proxy.
function Save-ProxyMarker([string]$Url) {
    if ($null -eq $script:LogReady) { $script:LogReady = Initialize-LogDir }
    if (-not $script:LogReady) { return $false }
    try {
        [System.IO.File]::WriteAllText((Join-Path $LogDir 'proxy.url'), $Url, $Utf8NoBom)
        return $true
    } catch {
        return $false
    }
}

function Read-ProxyMarker {
    if ($null -eq $script:LogReady) { $script:LogReady = Initialize-LogDir }
    $path = Join-Path $LogDir 'proxy.url'
    if (-not $script:LogReady -or -not (Test-Path -LiteralPath $path -PathType Leaf)) { return '' }
    try {
        return [System.IO.File]::ReadAllText($path).Trim()
    } catch {
        return ''
    }
}

function Remove-ProxyMarker {
    Remove-Item -LiteralPath (Join-Path $LogDir 'proxy.url') -Force -ErrorAction SilentlyContinue
}

function Invoke-Onboarding {
    # Platform prerequisites of the agent.
    if (-not [Environment]::Is64BitProcess) {
        return (New-Result 'failed' $ExitUnsupported 'platform' 'unsupported-platform' 'not running in 64-bit PowerShell (the agent requires it)' '')
    }
    if ($ARC_KEY_ID -cnotmatch '^[0-9a-f-]{36}$') {
        return (New-Result 'failed' $ExitInstall 'key-exchange' 'key-id' 'the key exchange id is malformed' '')
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
            # The key exchange only checks: the install, which carries the token, disconnects.
            if ($ARC_MODE -eq 'key-exchange') { return (New-ExchangeKey $instanceId) }
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

    # 3. Download the installer and the MSI (each checked against its pin, the MSI also against its
    # signature) into a private directory, and run the installer on the checked MSI.
    # The first command of the batch ends here, with the public key.
    if ($ARC_MODE -eq 'key-exchange') { return (New-ExchangeKey $instanceId) }

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
    $msi = Join-Path $workDir 'agent.msi'
    $installerResult = Join-Path $workDir 'installer-result.json'
    $installerTemp = Join-Path $workDir 'installer-temp'
    $proxyArguments = @()
    if ($ARC_PROXY_URL) {
        $proxyArguments = @('-Proxy', $ARC_PROXY_URL)
        Write-Log ('using proxy ' + $ARC_PROXY_URL)
    }

    $failure = Get-CheckedDownload $ARC_INSTALLER_URL $installer $ARC_DOWNLOAD_PROTOCOLS $ARC_INSTALLER_SHA256 'installer'
    if ($failure) { return $failure }
    # The MSI too is downloaded and checked here (Microsoft's installer would fetch it unchecked): its
    # pin, then Microsoft's Authenticode signature.
    $failure = Get-CheckedDownload $ARC_MSI_URL $msi $ARC_MSI_DOWNLOAD_PROTOCOLS $ARC_MSI_SHA256 'MSI'
    if ($failure) { return $failure }
    $failure = Get-SignatureProblem $msi
    if ($failure) { return $failure }

    # The installer runs in its own PowerShell process (the same edition as this one): its exit code and
    # whatever it prints are its own, and it cannot see this script's variables. It installs the checked
    # MSI (-AltDownload takes a local path) and writes its result, with its AZCM error code, to -OutFile:
    # its exit code alone says little (some versions end with `return 1`, which exits 0). Its TEMP is our
    # private directory, so its copy of the MSI and msiexec's log stay there and go with it.
    try {
        New-Item -ItemType Directory -Path $installerTemp -ErrorAction Stop | Out-Null
    } catch {
        return (New-Result 'failed' $ExitInstall 'install' 'installer-tempdir' "cannot create the installer's temporary directory" '')
    }
    Write-Log 'running the agent installer'
    $shell = if ($PSVersionTable.PSEdition -eq 'Core') { Join-Path $PSHOME 'pwsh.exe' } else { Join-Path $PSHOME 'powershell.exe' }
    $installerArguments = @('-NoLogo', '-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Unrestricted', '-File', $installer,
        '-AltDownload', $msi, '-OutFile', $installerResult) + $proxyArguments
    $install = Invoke-Process $shell $installerArguments $InstallerTimeoutSeconds @{ TEMP = $installerTemp; TMP = $installerTemp }
    Save-Log 'installer.log' $install.Log
    Save-File (Join-Path $installerTemp 'installationlog.txt') 'msi-install.log'
    if ($install.TimedOut) {
        Show-Tail $install.Log
        return (New-Result 'failed' $ExitInstall 'install' 'installer-timeout' ('the agent installer did not finish within ' + $InstallerTimeoutSeconds + ' seconds') '')
    }
    $reported = Read-InstallerResult $installerResult
    if ($install.ExitCode -ne 0 -or $reported.Status -eq 'failed') {
        Show-Tail $install.Log
        $exitCode = if ($install.ExitCode -ne 0) { $install.ExitCode } else { 1 }
        $code = if ($reported.Code) { $reported.Code } else { 'installer-failed' }
        $message = 'the agent installer exited with ' + $install.ExitCode
        if ($reported.Code) { $message = $message + ': ' + $reported.Code }
        if ($reported.Message) { $message = $message + ': ' + (Limit-Text $reported.Message 300) }
        return (New-Result 'failed' $exitCode 'install' $code $message '')
    }
    if (-not (Test-Path -LiteralPath $AgentPath -PathType Leaf)) {
        Show-Tail $install.Log
        return (New-Result 'failed' $ExitInstall 'install' 'agent-missing' 'azcmagent.exe is missing after the installation' '')
    }
    Write-Log ('agent installed: ' + $AgentPath)

    # The agent's proxy: set it in proxy mode (and remember that arc-onboard set it); in public mode clear
    # only a proxy.url arc-onboard itself set earlier. One an administrator set is left and reported.
    $script:ProxyNote = ''
    if ($ARC_PROXY_URL) {
        $config = Invoke-Agent @('config', 'set', 'proxy.url', $ARC_PROXY_URL)
        Save-Log 'config.log' $config.Log
        if ($config.ExitCode -ne 0) {
            Show-Tail $config.Log
            return (New-Result 'failed' $config.ExitCode 'proxy-config' 'agent-config-failed' ('azcmagent config set proxy.url exited with ' + $config.ExitCode) '')
        }
        if (-not (Save-ProxyMarker $ARC_PROXY_URL)) {
            Write-Log 'cannot record that arc-onboard set proxy.url; a later public run will leave it'
        }
    } else {
        $current = ''
        $found = [regex]::Match([string](Invoke-Agent @('config', 'get', 'proxy.url')).Output, 'https?://[^\s"'']+')
        if ($found.Success) { $current = $found.Value }
        $ours = Read-ProxyMarker
        if ($current -and $ours -and $current -ceq $ours) {
            Write-Log 'clearing the proxy.url an earlier arc-onboard proxy install set (connectivity is public)'
            $config = Invoke-Agent @('config', 'clear', 'proxy.url')
            Save-Log 'config.log' $config.Log
            if ($config.ExitCode -ne 0) {
                Show-Tail $config.Log
                return (New-Result 'failed' $config.ExitCode 'proxy-config' 'agent-config-failed' ('azcmagent config clear proxy.url exited with ' + $config.ExitCode) '')
            }
            Remove-ProxyMarker
        } elseif ($current) {
            $script:ProxyNote = '; the agent keeps proxy.url ' + $current + ', which arc-onboard did not set (connectivity is public)'
            Write-Log ('proxy.url is ' + $current + ', set by someone else: left as it is')
        } elseif ($ours) {
            Remove-ProxyMarker
        }
    }

    # 4. Connect. The token goes through a private --config file, never on the command line: the sealed
    # configuration is opened into it right before connect and the file is deleted right after.
    $connect = @('connect',
        '--subscription-id', $ARC_SUBSCRIPTION_ID,
        '--resource-group', $ARC_RESOURCE_GROUP,
        '--location', $ARC_LOCATION,
        '--tenant-id', $ARC_TENANT_ID,
        '--cloud', $ARC_CLOUD)
    if ($ARC_CORRELATION_ID) { $connect += @('--correlation-id', $ARC_CORRELATION_ID) }
    if ($ARC_GATEWAY_ID) { $connect += @('--gateway-id', $ARC_GATEWAY_ID) }
    if ($ARC_PRIVATE_LINK_SCOPE) { $connect += @('--private-link-scope', $ARC_PRIVATE_LINK_SCOPE) }
    if ($ARC_AUTOMATIC_UPGRADE -eq 'true') { $connect += @('--enable-automatic-upgrade') }
    # The tags end with the per-instance ownership tag: one script serves a batch, so it is added here.
    $tags = 'AwsInstanceId=' + $instanceId
    if ($ARC_TAGS) { $tags = $ARC_TAGS + ',' + $tags }
    $connect += @('--tags', $tags)
    $configPath = Join-Path $workDir 'connect.json'
    try {
        # Created empty and locked down before the token is written into it.
        [System.IO.File]::WriteAllText($configPath, '', $Utf8NoBom)
        $script:ConnectConfig = $configPath
        if (-not (Set-PrivateAccess $configPath)) { throw 'icacls failed' }
    } catch {
        return (New-Result 'failed' $ExitInstall 'connect' 'connect-config' 'cannot write the private connect configuration file' '')
    }
    try {
        Open-SealedConfig $instanceId $configPath
    } catch {
        return (New-Result 'failed' $ExitInstall 'connect' 'sealed-token' ('cannot open the sealed access token: ' + $_.Exception.Message) '')
    }
    $connect += @('--resource-name', $instanceId, '--config', $configPath)

    Write-Log ('connecting to Azure Arc as ' + $instanceId)
    try {
        $run = Invoke-Agent $connect
    } finally {
        Remove-Item -LiteralPath $configPath -Force -ErrorAction SilentlyContinue
        Remove-Item -LiteralPath $KeyPath -Force -ErrorAction SilentlyContinue
        $script:ConnectConfig = $null
    }
    Save-Log 'connect.log' $run.Log

    # 5. The result.
    if ($run.ExitCode -eq 0) {
        if ($reconnectedFrom) {
            return (New-Result 'connected' 0 'connect' 'reconnected' ('reconnected as ' + $instanceId + ' (the agent was disconnected locally from ' + $reconnectedFrom + ')') '')
        }
        return (New-Result 'connected' 0 'connect' 'connected' ('connected as ' + $instanceId + $script:ProxyNote) '')
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
    if ($null -eq $result -or -not ($result.Outcome -is [string])) {
        $result = New-Result 'failed' 1 'unexpected' 'unexpected' 'the onboarding ended without a result' ''
    }
} catch {
    $result = New-Result 'failed' 1 'unexpected' 'unexpected' $_.Exception.Message ''
} finally {
    if ($script:ConnectConfig) { Remove-Item -LiteralPath $script:ConnectConfig -Force -ErrorAction SilentlyContinue }
    if ($script:WorkDir) { Remove-Item -LiteralPath $script:WorkDir -Recurse -Force -ErrorAction SilentlyContinue }
    if ($ARC_MODE -ne 'key-exchange') { Remove-Item -LiteralPath $KeyPath -Force -ErrorAction SilentlyContinue }
}

# The key exchange's success is its ARC_ONBOARD_KEY line, printed already.
if ($result.Outcome -eq 'key-ready') {
    [Console]::Out.Flush()
    exit 0
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
# A code SSM takes as "reboot and run again" stays in the result line; the script exits with its own.
$exitCode = [int]$result.ExitCode
if ($SsmRebootCodes -contains $exitCode) { $exitCode = $ExitRebootCode }
exit $exitCode
