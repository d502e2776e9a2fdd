# fish completion for claude-failover
# Load it: claude-failover completion fish | source
# or save it as ~/.config/fish/completions/claude-failover.fish
function __claude_failover_complete
    set -l prev (commandline -opc)
    set -l cur (commandline -ct)
    set -q cur[1]; or set cur ''
    for line in ($prev[1] __complete --shell fish -- $prev[2..-1] "$cur" 2>/dev/null)
        if test "$line" = ':files'
            __fish_complete_path "$cur"
        else
            echo $line
        end
    end
end
complete -c claude-failover -f -a '(__claude_failover_complete)'
