# bash completion for proctor: its commands, each command's options, and the ids of the
# processes running now (from `proctor ps`). The words come from proctor itself
# (`proctor __complete`), so they follow the commands of the proctor that is run.
# Load it with `source proctor.bash`, or install it as
# /usr/share/bash-completion/completions/proctor.

_proctor() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  local IFS=$'\n'
  local -a words
  words=($("${COMP_WORDS[0]}" __complete "$COMP_CWORD" "${COMP_WORDS[@]}" 2>/dev/null))
  if [[ ${words[0]} == "@ids "* ]]; then
    # The global options before the command say which proctord to ask.
    local command_index=${words[0]#@ids }
    words=($("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:command_index-1}" ps 2>/dev/null |
      awk 'NR > 1 { print $1 }'))
  fi
  COMPREPLY=($(compgen -W "${words[*]}" -- "$cur"))
}

complete -o bashdefault -o default -F _proctor proctor
