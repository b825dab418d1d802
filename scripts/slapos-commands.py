#!/usr/bin/env python3
"""Writes docs/commands.md: every command of slapos.core's `slapos` and
its options (read from the Python commands' own argparse parsers), with
ours beside each: present (our help shows that spelling), alias (accepted
under that spelling, shown under another), missing; and why, from NOTES.

Run with the project venv's Python (slapos.core 1.26.1 installed), after
building ours:

    $SLAPOS_VENV/bin/python3 scripts/slapos-commands.py target/debug/slapos > docs/commands.md

Our binary is only ever asked for help: `slapos <command> [<option> [X]] --help`.
"""
import os
import subprocess
import sys
import tempfile

from slapos.cli.entry import SlapOSApp
import slapos.version

OURS = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else 'target/debug/slapos')

# Commands whose arguments go to supervisorctl: never probed (a probe
# could reach supervisorctl); their only option is --cfg, global for us.
PASSTHROUGH = {'node status', 'node start', 'node stop', 'node restart',
               'node tail', 'node supervisorctl'}

# (command, option) or (command, None) -> why ours differs or how it maps.
NOTES = {
    ('cachelookup binary-sr', None): 'ours: `slapos cache lookup binary-sr`, `cachelookup` kept as its SlapOS spelling',
    ('cachelookup pypi', None): 'see `cachelookup binary-sr`',
    ('cachelookup url', None): 'see `cachelookup binary-sr`',
    ('console', None): 'ours is a Rhai console, not a Python shell: scripts are Rhai',
    ('console', '-i'): 'Python shells (ipython/bpython) do not apply to the Rhai console: a clear message',
    ('console', '-p'): 'see -i',
    ('console', '-b'): 'see -i',
    ('help', None): 'clap\'s `help`: `slapos help node software` as SlapOS',
    ('node format', '--now'): 'accepted; ours never sleeps first',
    ('node format', '-c'): 'obsolete in SlapOS too: accepted, hidden, ignored',
    ('node format', '--console'): 'obsolete in SlapOS too: accepted, hidden, ignored',
    ('node software', '--supervisord-socket'): 'accepted and ignored, as slapgrid 1.26.1 ignores it (a warning names a different path)',
    ('node instance', '--supervisord-socket'): 'accepted and ignored, as slapgrid 1.26.1 ignores it',
    ('node report', '--supervisord-socket'): 'accepted and ignored, as slapgrid 1.26.1 ignores it',
    ('node promise', '--supervisord-socket'): 'accepted and ignored, as slapgrid 1.26.1 ignores it',
    ('node software', '--partition-timeout'): 'accepted, changes nothing for builds (as slapgrid)',
    ('node promise', '--partition-timeout'): 'accepted, changes nothing for promises (as slapgrid)',
    ('node report', '--partition-timeout'): 'ours: the deadline of the prerm manager\'s pre-delete scripts',
    ('configure local', '--ipv4-local-network'): 'a local node (no root, or --local) defaults to its own free 127.X.Y.0/24',
    ('configure local', None): 'writes the configuration and prints the two commands that start the master and format (SlapOS runs them)',
    ('configure client', '--master-url-web'): 'not needed: our master has no separate web site (the token comes from `slapos user token`)',
    ('node register', '--master-url-web'): 'not needed: our master has no separate web site (the token comes from `slapos computer token`)',
    ('node register', '--dry-run'): 'not yet: `node register` always writes its files',
    ('node prune', None): 'shared parts only, as SlapOS; software releases go with `node software` (destroyed, --garbage-collect)',
}


def run(args):
    with tempfile.TemporaryDirectory() as cwd:
        env = dict(os.environ, SLAPOS_CONFIGURATION='/nonexistent/slapos.cfg',
                   SLAPOS_CLIENT_CONFIGURATION='/nonexistent/slapos-client.cfg', HOME=cwd)
        try:
            p = subprocess.run([OURS] + args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=20)
        except subprocess.TimeoutExpired:
            return 1, ''
    return p.returncode, (p.stdout + p.stderr).decode('utf-8', 'replace')


def our_help(words):
    if words == ['help']:
        return run(['help', 'node', 'software'])
    return run(words + ['--help'])


def accepted(words, option):
    if ' '.join(words) in PASSTHROUGH:
        return False
    for probe in ([option, '--help'], [option, 'X', '--help']):
        code, out = run(words + probe)
        if code == 0 and 'Usage:' in out:
            return True
    return False


def mentions(help_text, option):
    import re
    return re.search(r'(^|[\s,\[])' + re.escape(option) + r'([\s,=\]\[<.]|$)', help_text, re.M) is not None


def status(words, help_text, strings, positional):
    if positional:
        return 'present', ''
    shown = [s for s in strings if mentions(help_text, s)]
    spelled = []
    for s in strings:
        if s in shown:
            spelled.append('`%s` present' % s)
        elif accepted(words, s):
            spelled.append('`%s` alias' % s)
        else:
            spelled.append('`%s` missing' % s)
    states = {x.rsplit(' ', 1)[1] for x in spelled}
    overall = 'present' if states == {'present'} else 'missing' if states == {'missing'} else 'alias' if 'missing' not in states else 'partly'
    return overall, ', '.join(spelled)


def main():
    app = SlapOSApp()
    out = []
    w = out.append
    w('# Commands: SlapOS %s and ours\n' % slapos.version.version)
    w('Every command of slapos.core %s\'s `slapos` and each of its options, read from the Python\n'
      'commands\' own parsers, with ours beside it: **present** (our `--help` shows that spelling),\n'
      '**alias** (accepted under that spelling, shown under another), **missing**. Generated by\n'
      '`scripts/slapos-commands.py` (run it again after a change; see its header). Options every\n'
      'command takes (`-v`, `-q`, `--debug`, `--log-file`, `--log-color`, `--log-time`, `--cfg`) are\n'
      'global in ours (`slapos --help`).\n' % slapos.version.version)
    gp = app.build_option_parser('SlapOS', slapos.version.version)
    w('## Global options\n')
    w('| SlapOS option | ours | note |\n|---|---|---|')
    for a in gp._actions:
        if '-h' in a.option_strings:
            continue
        code, top = run(['--help'])
        overall, detail = status([], top, a.option_strings, False)
        note = ''
        if a.option_strings == ['--version']:
            note = 'also `-V`'
        if a.option_strings == ['--log-time']:
            note = 'as 1.26.1\'s flag does: drops the timestamp (the name says the opposite)'
        w('| %s | %s | %s |' % (' '.join('`%s`' % s for s in a.option_strings), detail, note))
    w('\n## Commands\n')
    w('| command | ours | SlapOS option or argument | ours | note |\n|---|---|---|---|---|')
    ours_missing = 0
    for name, ep in sorted(app.command_manager):
        words = name.split()
        code, help_text = our_help(words)
        have = code == 0
        cmd = ep.load()(app, None)
        parser = cmd.get_parser('slapos ' + name)
        note = NOTES.get((name, None), '')
        first = True
        for a in parser._actions:
            if '-h' in a.option_strings:
                continue
            positional = not a.option_strings
            label = ('`%s`' % a.dest) if positional else ' '.join('`%s`' % s for s in a.option_strings)
            if not have:
                detail = 'missing'
            elif a.option_strings == ['--cfg']:
                detail = '`--cfg` present (global)'
            else:
                detail = status(words, help_text, a.option_strings, positional)[1] or 'present'
            if 'missing' in detail:
                ours_missing += 1
            onote = ''
            for s in a.option_strings or [a.dest]:
                onote = onote or NOTES.get((name, s), '')
            w('| %s | %s | %s | %s | %s |' % ('`%s`' % name if first else '', ('present' if have else 'missing') if first else '',
                                             label, detail, onote or (note if first else '')))
            first = False
        if first:
            w('| `%s` | %s | | | %s |' % (name, 'present' if have else 'missing', note))
    w('\n%d SlapOS option spellings have no counterpart in ours (each row above says why).\n' % ours_missing)
    w('## Ours only\n')
    w('Commands SlapOS does not have: `proxy migrate` (copy a site between databases), `node watchdog`\n'
      '(supervisord\'s event listener, a separate `slapos-watchdog` program in SlapOS), `user token`,\n'
      '`complete --shell zsh|fish|…`, and the options each command\'s `--help` shows beyond the table.')
    sys.stdout.write('\n'.join(out) + '\n')


if __name__ == '__main__':
    main()
