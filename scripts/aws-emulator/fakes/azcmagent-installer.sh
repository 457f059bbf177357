#!/bin/bash
# A fake of Microsoft's Linux agent installer (`install_linux_azcmagent.sh`), served by the AWS emulator at
# /_agent/azcmagent-linux and by tests/install_script.rs. Like Microsoft's it makes its own
# `mktemp -d $FAKE_INSTALLER_TMP_ROOT/azcmagent.XXXXXXXXXX` before reading its arguments, downloads into
# `--tempdir`, and writes its result to `--output` (`AZCM$FAKE_INSTALLER_AZCM` on failure, with printf,
# unescaped). Records its argv (like the agent does), environment and umask, installs the fake agent
# (azcmagent.sh, put in place of the marker line below by whoever serves this file) into $FAKE_BIN and
# exits with $FAKE_INSTALLER_EXIT.
tempdir=$(mktemp -d "$FAKE_INSTALLER_TMP_ROOT/azcmagent.XXXXXXXXXX")
printf '%s\0' "$#" "$@" >"$FAKE_STATE/installer-argv"
env -0 >"$FAKE_STATE/installer-env"
umask >"$FAKE_STATE/installer-umask"
outfile=''
while [ $# -gt 0 ]; do
    case "$1" in
        --output) outfile="$2"; shift 2 ;;
        --tempdir) tempdir="$2"; shift 2 ;;
        *) shift ;;
    esac
done
echo 'repository package' >"$tempdir/packages-microsoft-prod.deb"
cat >"$FAKE_BIN/azcmagent" <<'FAKE_AGENT_EOF'
@FAKE_AGENT@
FAKE_AGENT_EOF
chmod +x "$FAKE_BIN/azcmagent"
echo 'fake installer: done'
if [ -n "$outfile" ] && [ -n "${FAKE_INSTALLER_AZCM:-}" ]; then
    printf '{\n\t"status": "%s",\n\t"error": {\n\t\t"code": "AZCM%04d",\n\t\t"message": "%s"\n\t}\n}' \
        failed "$FAKE_INSTALLER_AZCM" "$0: error installing \"azcmagent\" (exit code: 100). See 'apt' command logs for more information." >"$outfile"
elif [ -n "$outfile" ] && [ "${FAKE_INSTALLER_EXIT:-0}" = 0 ]; then
    printf '{\n\t"status": "%s",\n\t"message": "%s"\n}' success 'Latest version of azcmagent is installed.' >"$outfile"
fi
exit "${FAKE_INSTALLER_EXIT:-0}"
