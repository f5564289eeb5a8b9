# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_logmirror_global_optspecs
    string join \n h/help V/version
end

function __fish_logmirror_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_logmirror_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_logmirror_using_subcommand
    set -l cmd (__fish_logmirror_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c logmirror -n "__fish_logmirror_needs_command" -s h -l help -d 'Print help'
complete -c logmirror -n "__fish_logmirror_needs_command" -s V -l version -d 'Print version'
complete -c logmirror -n "__fish_logmirror_needs_command" -f -a "mount" -d 'Mount BACKING on MOUNTPOINT; returns once the mount serves (daemon in the background)'
complete -c logmirror -n "__fish_logmirror_needs_command" -f -a "status" -d 'Show mode, policy, journal, backlog and per-mirror state, lag, throughput and errors'
complete -c logmirror -n "__fish_logmirror_needs_command" -f -a "sync" -d 'Wait until every mirror confirmed all writes committed before this call'
complete -c logmirror -n "__fish_logmirror_needs_command" -f -a "verify" -d 'Compare every mirror with the backing tree; exit 0 only if they are equal'
complete -c logmirror -n "__fish_logmirror_needs_command" -f -a "restore" -d 'Rebuild a directory from an S3 mirror, as for a host that lost its backing directory'
complete -c logmirror -n "__fish_logmirror_needs_command" -f -a "fold" -d 'Fold an S3 mirror\'s old journal objects into a snapshot and remove them, for mounts with history=append-only whose keys may not delete'
complete -c logmirror -n "__fish_logmirror_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c logmirror -n "__fish_logmirror_using_subcommand mount" -s o -d 'Options as key=value[,key=value...]; the keys and their defaults are listed below [default: none]' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand mount" -l config -d 'TOML file with the same keys as -o; -o values override it [default: none]' -r -F
complete -c logmirror -n "__fish_logmirror_using_subcommand mount" -s f -d 'Stay in the foreground and log to stderr [default: off, the daemon detaches]'
complete -c logmirror -n "__fish_logmirror_using_subcommand mount" -s h -l help -d 'Print help'
complete -c logmirror -n "__fish_logmirror_using_subcommand status" -l json -d 'Print JSON instead of text [default: off, text]'
complete -c logmirror -n "__fish_logmirror_using_subcommand status" -s h -l help -d 'Print help'
complete -c logmirror -n "__fish_logmirror_using_subcommand sync" -l timeout -d 'Give up after this long, as in 90, 30s, 500ms or 5m (a bare number is seconds)' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand sync" -l progress-interval -d 'Time between two progress lines on stderr when it is not a terminal, as in 10s or 1m (on a terminal, one line is redrawn in place)' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand sync" -s h -l help -d 'Print help'
complete -c logmirror -n "__fish_logmirror_using_subcommand verify" -l timeout -d 'How long to wait for mirrors to confirm pending writes before comparing, as in 300, 30s or 5m' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand verify" -l progress-interval -d 'Time between two progress lines on stderr when it is not a terminal, as in 10s or 1m (on a terminal, one line is redrawn in place)' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand verify" -l repair -d 'Schedule a resync from the backing tree for each mirror that differs; `logmirror sync` then waits until it is done [default: off]'
complete -c logmirror -n "__fish_logmirror_using_subcommand verify" -s h -l help -d 'Print help'
complete -c logmirror -n "__fish_logmirror_using_subcommand restore" -s o -d 'Options as key=value[,key=value...]: endpoint, region, path_style, ca_file, allow_http, encrypt_key, compression, sse, sse_kms_key_id, sse_c_key [default: none, the AWS environment and profile apply]' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand restore" -l key -d 'Key file of an encrypted mirror: 64 hex digits, not readable by group or others; the same as -o encrypt_key=FILE [default: none]' -r -F
complete -c logmirror -n "__fish_logmirror_using_subcommand restore" -l at -d 'Restore the tree as of this time: RFC 3339 with an offset, as in 2026-12-04T10:00:00Z, or seconds since the Unix epoch [default: the newest record]' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand restore" -l seq -d 'Restore the tree as of right after the record with this seq [default: the newest record]' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand restore" -l progress-interval -d 'Time between two progress lines on stderr when it is not a terminal, as in 10s or 1m (on a terminal, one line is redrawn in place)' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand restore" -l force -d 'Replay into a directory that is not empty [default: off]'
complete -c logmirror -n "__fish_logmirror_using_subcommand restore" -s h -l help -d 'Print help'
complete -c logmirror -n "__fish_logmirror_using_subcommand fold" -s o -d 'Options as key=value[,key=value...], as for restore [default: none, the AWS environment and profile apply]' -r
complete -c logmirror -n "__fish_logmirror_using_subcommand fold" -s h -l help -d 'Print help'
complete -c logmirror -n "__fish_logmirror_using_subcommand help; and not __fish_seen_subcommand_from mount status sync verify restore fold help" -f -a "mount" -d 'Mount BACKING on MOUNTPOINT; returns once the mount serves (daemon in the background)'
complete -c logmirror -n "__fish_logmirror_using_subcommand help; and not __fish_seen_subcommand_from mount status sync verify restore fold help" -f -a "status" -d 'Show mode, policy, journal, backlog and per-mirror state, lag, throughput and errors'
complete -c logmirror -n "__fish_logmirror_using_subcommand help; and not __fish_seen_subcommand_from mount status sync verify restore fold help" -f -a "sync" -d 'Wait until every mirror confirmed all writes committed before this call'
complete -c logmirror -n "__fish_logmirror_using_subcommand help; and not __fish_seen_subcommand_from mount status sync verify restore fold help" -f -a "verify" -d 'Compare every mirror with the backing tree; exit 0 only if they are equal'
complete -c logmirror -n "__fish_logmirror_using_subcommand help; and not __fish_seen_subcommand_from mount status sync verify restore fold help" -f -a "restore" -d 'Rebuild a directory from an S3 mirror, as for a host that lost its backing directory'
complete -c logmirror -n "__fish_logmirror_using_subcommand help; and not __fish_seen_subcommand_from mount status sync verify restore fold help" -f -a "fold" -d 'Fold an S3 mirror\'s old journal objects into a snapshot and remove them, for mounts with history=append-only whose keys may not delete'
complete -c logmirror -n "__fish_logmirror_using_subcommand help; and not __fish_seen_subcommand_from mount status sync verify restore fold help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
