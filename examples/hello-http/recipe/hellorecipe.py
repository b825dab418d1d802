"""Buildout recipes of the hello-http example software release.

Small stand-ins for slapos.recipe.template and slapos.cookbook, so that the
example builds offline:

template           write `output` from `input` (or inline `content`), replacing
                   @name@ by the part option `name` unless `raw = true`;
                   octal `mode` (default 644). `python` is pre-filled with the
                   interpreter that runs buildout.
mkdirs             create the directories listed in `paths` (0750).
slapconfiguration  read this partition's parameters from the master with the
                   slapos.slap library (at buildout init time) and expose
                   `ip`, `url-prefix` and `configuration.<key>`.
publish            publish every option but `recipe` as connection parameters.
"""
import os
import re
import sys


class Template(object):
    def __init__(self, buildout, name, options):
        self.options = options
        options.setdefault('python', sys.executable)
        if 'content' not in options:
            with open(options['input']) as f:
                options['content'] = f.read()

    def install(self):
        content = self.options['content']
        if self.options.get('raw', 'false').lower() != 'true':
            content = re.sub(r'@([a-zA-Z0-9_.-]+)@',
                             lambda m: self.options[m.group(1)], content)
        if not content.endswith('\n'):
            content += '\n'
        output = self.options['output']
        with open(output + '.tmp', 'w') as f:
            f.write(content)
        os.chmod(output + '.tmp', int(self.options.get('mode', '644'), 8))
        os.rename(output + '.tmp', output)
        return [output]

    update = install


class MkDirs(object):
    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        for path in self.options['paths'].split():
            os.makedirs(path, 0o750, exist_ok=True)
        return []

    update = install


def _partition(buildout):
    from slapos import slap as slapmodule
    conn = buildout['slap-connection']
    slap = slapmodule.slap()
    slap.initializeConnection(conn['server-url'],
                              conn.get('key-file') or None,
                              conn.get('cert-file') or None)
    return slap.registerComputerPartition(conn['computer-id'],
                                          conn['partition-id'])


class SlapConfiguration(object):
    def __init__(self, buildout, name, options):
        parameters = _partition(buildout).getInstanceParameterDict()
        ipv4 = [ip for _, ip in parameters.get('ip_list', []) if ':' not in ip]
        ipv6 = [ip for _, ip in parameters.get('ip_list', []) if ':' in ip]
        # prefer IPv4 (unique per partition, also on a local node), else IPv6
        if ipv4:
            options['ip'] = ipv4[0]
            options['url-prefix'] = 'http://' + ipv4[0]
        elif ipv6:
            options['ip'] = ipv6[0]
            options['url-prefix'] = 'http://[%s]' % ipv6[0]
        else:
            options['ip'] = '127.0.0.1'
            options['url-prefix'] = 'http://127.0.0.1'
        for key, value in parameters.items():
            if isinstance(value, str):
                options['configuration.' + key] = value

    def install(self):
        return []

    update = install


class Publish(object):
    def __init__(self, buildout, name, options):
        self.buildout = buildout
        self.options = options

    def install(self):
        _partition(self.buildout).setConnectionDict(
            {k: v for k, v in self.options.items() if k != 'recipe'})
        return []

    update = install
