# bash completion for claude-failover
# Load it: source <(claude-failover completion bash)
# or save it as ~/.local/share/bash-completion/completions/claude-failover
_claude_failover() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    [[ $cur == [=:] ]] && cur=
    local prog=${COMP_WORDS[0]}
    local IFS=$'\n' line files=
    local -a out
    out=($("$prog" __complete --shell bash --current "$cur" --line "${COMP_LINE:0:COMP_POINT}" 2>/dev/null))
    COMPREPLY=()
    for line in "${out[@]}"; do
        if [[ $line == ":files" ]]; then files=1; else COMPREPLY+=("$line"); fi
    done
    if [[ -n $files ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY+=($(compgen -f -- "$cur"))
    fi
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=/,] ]]; then
        compopt -o nospace 2>/dev/null
    fi
}
complete -F _claude_failover claude-failover
