"""ssh_config read as OpenSSH reads it: blocks, Include, Match, tokens, jumps, refusals."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import pytest

from deployer.errors import ConfigError
from deployer.hosts.spec import HostSpec
from deployer.hosts.ssh import (
    DEFAULT_SERVER_ALIVE_COUNT_MAX,
    DEFAULT_SERVER_ALIVE_INTERVAL,
    resolve_target,
)
from deployer.hosts.sshconfig import MAX_INCLUDE_DEPTH, SSHConfig, parse_jump


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config(home: Path, text: str) -> SSHConfig:
    return SSHConfig(write(home / ".ssh" / "config", text), home=home)


def test_first_value_wins_and_later_blocks_fill_the_gaps(home: Path) -> None:
    cfg = config(
        home,
        "Host web\n  HostName 10.0.0.5\n  Port 2200\n"
        "Host web\n  Port 9999\n  User second\n"
        "Host *\n  User everyone\n  ConnectTimeout 4\n",
    )
    entry = cfg.lookup("web")
    assert (entry.hostname, entry.port, entry.user, entry.connect_timeout) == ("10.0.0.5", 2200, "second", 4.0)
    other = cfg.lookup("db")
    assert (other.hostname, other.port, other.user) == ("db", None, "everyone")
    # Command-line values (user@host:port in deploy.toml) come first, as ssh -l / -p do.
    assert cfg.lookup("web", user="deploy", port=22).user == "deploy"
    assert cfg.lookup("web", user="deploy", port=22).port == 22


def test_patterns_negation_equals_syntax_quotes_and_comments(home: Path) -> None:
    cfg = config(
        home,
        "# a comment\n"
        "Host *.example.com !bastion.example.com\n"
        '  User="deploy"   # trailing comment\n'
        '  IdentityFile "~/.ssh/key with space"\n'
        "Host app?\n  Port=2222\n",
    )
    assert cfg.lookup("api.example.com").user == "deploy"
    assert cfg.lookup("API.Example.COM").user == "deploy"  # ssh lower-cases the name
    assert cfg.lookup("bastion.example.com").user is None
    assert cfg.lookup("api.example.com").identity_files == (str(home / ".ssh" / "key with space"),)
    assert cfg.lookup("app1").port == 2222 and cfg.lookup("app12").port is None


def test_include_glob_relative_to_dot_ssh_in_sorted_order(home: Path) -> None:
    write(home / ".ssh" / "conf.d" / "20-web.conf", "Host web\n  Port 2020\n  User twenty\n")
    write(home / ".ssh" / "conf.d" / "10-web.conf", "Host web\n  Port 1010\n")
    write(home / ".ssh" / "conf.d" / "notes.txt", "Host web\n  Port 7777\n")
    cfg = config(home, "Include conf.d/*.conf\nHost web\n  Port 3030\n  HostName web.internal\n")
    entry = cfg.lookup("web")
    assert (entry.port, entry.user, entry.hostname) == (1010, "twenty", "web.internal")
    assert entry.sources["port"].endswith("10-web.conf line 2")


def test_include_inside_a_host_block_is_conditional_and_does_not_leak(home: Path) -> None:
    write(home / ".ssh" / "web.conf", "Port 2121\nHost *\n  User from-include\n")
    write(home / ".ssh" / "nested" / "a.conf", "Include ~/.ssh/nested/b.conf\n")
    write(home / ".ssh" / "nested" / "b.conf", "ConnectTimeout 7\n")
    cfg = config(
        home,
        "Host web\n  Include web.conf\n  HostName after-include\n"
        "Host db\n  Include nested/a.conf\n",
    )
    web = cfg.lookup("web")
    # The included file's "Host *" does not end the includer's block: HostName still applies.
    assert (web.port, web.user, web.hostname) == (2121, "from-include", "after-include")
    other = cfg.lookup("other")
    # Included from a block that does not match: none of it applies, its Host * neither.
    assert (other.port, other.user, other.connect_timeout) == (None, None, None)
    assert cfg.lookup("db").connect_timeout == 7.0  # nested includes


def test_include_loop_is_stopped_at_the_depth_limit(home: Path) -> None:
    write(home / ".ssh" / "loop.conf", "Include loop.conf\n")
    cfg = config(home, "Include loop.conf\n")
    with pytest.raises(ConfigError, match=f"nested more than {MAX_INCLUDE_DEPTH} levels"):
        cfg.lookup("anything")


def test_match_criteria(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = getpass.getuser()
    cfg = config(
        home,
        "Host short\n  HostName short.internal.example\n"
        "Match host *.internal.example\n  Port 2001\n"
        "Match originalhost short user admin\n  User matched-admin\n"
        f"Match localuser {me}\n  ConnectTimeout 9\n"
        "Match !host *.internal.example\n  Port 2002\n"
        "Match all\n  User fallback\n",
    )
    short = cfg.lookup("short")
    assert (short.port, short.user, short.connect_timeout) == (2001, "fallback", 9.0)
    assert cfg.lookup("short", user="admin").user == "admin"  # explicit user still wins
    assert cfg.lookup("elsewhere").port == 2002


def test_match_exec_refuses_what_it_would_decide_but_not_harmless_lines(home: Path) -> None:
    cfg = config(home, 'Match exec "true"\n  ForwardAgent yes\n  SendEnv LANG\nHost *\n  Port 2\n')
    assert cfg.lookup("web").port == 2
    cfg = config(home, 'Match exec "test -e /tmp/x"\n  Port 2200\n')
    with pytest.raises(ConfigError) as caught:
        cfg.lookup("web")
    assert "config line 2: Port is set in a Match block" in str(caught.value)
    assert "Match all, host, originalhost, user and localuser" in str(caught.value)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("Ciphers aes256-gcm@openssh.com", "choosing ciphers"),
        ("HostKeyAlias other", "verifying the host key under another name"),
        ("BindAddress 10.0.0.1", "binding the local end to an address"),
        ("CertificateFile ~/.ssh/id_cert.pub", "SSH certificates"),
        ("CanonicalizeHostname yes", "host name canonicalization"),
        ("IdentityAgent ~/.1password/agent.sock", "an agent socket other than $SSH_AUTH_SOCK"),
    ],
)
def test_options_that_change_the_connection_are_refused(home: Path, line: str, what: str) -> None:
    cfg = config(home, f"Host web\n  HostName 10.0.0.5\n  {line}\n")
    with pytest.raises(ConfigError) as caught:
        cfg.lookup("web")
    message = str(caught.value)
    assert f"{home / '.ssh' / 'config'} line 3: " in message
    assert "applies to web" in message and what in message
    assert "hint:" in message
    # The same line in a block for another host is none of our business.
    assert cfg.lookup("db").hostname == "db"


def test_harmless_options_are_ignored_and_unknown_ones_refused(home: Path) -> None:
    cfg = config(
        home,
        "Host *\n  ForwardAgent yes\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%r@%h:%p\n"
        "  ServerAliveInterval 5\n  SendEnv LANG LC_*\n  StrictHostKeyChecking accept-new\n",
    )
    assert cfg.lookup("web").server_alive_interval == 5.0
    with pytest.raises(ConfigError, match="unknown option 'Prot'"):
        config(home, "Host *\n  Prot 22\n").lookup("web")
    assert config(home, "IgnoreUnknown Prot,Use*\nHost *\n  Prot 22\n  UseKeychain yes\n").lookup("web").port is None


def test_tokens_in_proxycommand_identityfile_and_hostname(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYER_KEYS", str(home / "keys"))
    cfg = config(
        home,
        "Host web\n  HostName %h.internal\n  User deploy\n  Port 2200\n"
        "  ProxyCommand ssh -W %h:%p -l %r bastion # %n 100%%\n"
        "  IdentityFile ${DEPLOYER_KEYS}/%r@%h\n"
        "  UserKnownHostsFile ~/.ssh/known_%n /dev/null\n",
    )
    entry = cfg.lookup("web")
    assert entry.hostname == "web.internal"
    # The rest of the line, verbatim: a shell command (a '#' in it is not a comment).
    assert entry.proxy_command == "ssh -W web.internal:2200 -l deploy bastion # web 100%"
    assert entry.identity_files == (str(home / "keys" / "deploy@web.internal"),)
    assert entry.user_known_hosts_files == (str(home / ".ssh" / "known_web"), "/dev/null")
    with pytest.raises(ConfigError, match="uses the token %q"):
        config(home, "Host *\n  ProxyCommand nc %q %p\n").lookup("web")
    with pytest.raises(ConfigError, match=r"uses \$\{NOPE_NOT_SET\}, which is not set"):
        config(home, "Host *\n  IdentityFile ${NOPE_NOT_SET}/key\n").lookup("web")


def test_proxyjump_and_proxycommand_compete_first_wins(home: Path) -> None:
    cfg = config(
        home,
        "Host a\n  ProxyJump j1,deploy@j2:2222\n  ProxyCommand nc %h %p\n"
        "Host b\n  ProxyCommand nc %h %p\n  ProxyJump j1\n"
        "Host c\n  ProxyJump none\nHost d\n  ProxyCommand none\n"
        "Host *\n  ProxyJump never-used\n",
    )
    a, b, c = cfg.lookup("a"), cfg.lookup("b"), cfg.lookup("c")
    assert (a.proxy_jump, a.proxy_command) == (("j1", "deploy@j2:2222"), None)
    assert (b.proxy_jump, b.proxy_command) == ((), "nc b 22")
    assert (c.proxy_jump, c.proxy_command) == ((), None)
    # "none" is a value too: it stops a later Host * from adding a jump.
    assert (cfg.lookup("d").proxy_jump, cfg.lookup("d").proxy_command) == ((), None)


@pytest.mark.parametrize(
    ("hop", "parsed"),
    [
        ("bastion", (None, "bastion", None)),
        ("ops@bastion:2222", ("ops", "bastion", 2222)),
        ("ssh://ops@10.0.0.1:22", ("ops", "10.0.0.1", 22)),
        ("[::1]:2200", (None, "::1", 2200)),
        ("me@corp@bastion", ("me@corp", "bastion", None)),
    ],
)
def test_parse_jump(hop: str, parsed: tuple[str | None, str, int | None]) -> None:
    assert parse_jump(hop) == parsed


@pytest.mark.parametrize("hop", ["", "user@", "host:0", "host:99999", "host:port", "[::1"])
def test_parse_jump_rejects_nonsense(hop: str) -> None:
    with pytest.raises(ConfigError, match="is not \\[user@\\]host\\[:port\\]"):
        parse_jump(hop)


def test_resolve_target_builds_the_chain_each_hop_with_its_own_settings(home: Path) -> None:
    for name in ("app", "j1", "j2"):
        write(home / ".ssh" / f"id_{name}", "not really a key\n")
    cfg = write(
        home / ".ssh" / "config",
        "Host app\n  HostName 10.0.0.5\n  User deploy\n  IdentityFile ~/.ssh/id_app\n"
        "  ProxyJump j1,ops@j2:2222\n"
        "Host j1\n  HostName 192.0.2.1\n  User jumper\n  IdentityFile ~/.ssh/id_j1\n"
        "  UserKnownHostsFile ~/.ssh/known_j1\n  ServerAliveInterval 4\n"
        "Host j2\n  HostName 192.0.2.2\n  User nobody-uses-this\n  IdentityFile ~/.ssh/id_j2\n"
        "  ProxyJump ignored-because-forced\n",
    )
    target = resolve_target(HostSpec("app"), ssh_config_path=cfg)
    assert (target.hostname, target.port, target.user) == ("10.0.0.5", 22, "deploy")
    assert target.key_filenames == (str(home / ".ssh" / "id_app"),)
    j2 = target.jump
    assert j2 is not None and (j2.name, j2.hostname, j2.port, j2.user) == ("ops@j2:2222", "192.0.2.2", 2222, "ops")
    assert j2.key_filenames == (str(home / ".ssh" / "id_j2"),)
    j1 = j2.jump
    assert j1 is not None and (j1.hostname, j1.user, j1.jump) == ("192.0.2.1", "jumper", None)
    assert j1.known_hosts_files[-1] == str(home / ".ssh" / "known_j1")
    assert (j1.server_alive_interval, target.server_alive_interval) == (4.0, DEFAULT_SERVER_ALIVE_INTERVAL)
    assert target.server_alive_count_max == DEFAULT_SERVER_ALIVE_COUNT_MAX
    assert target.route == " through the jump host ops@192.0.2.2:2222 (j2)"


def test_jump_loops_are_refused(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(ConfigError, match="more than 8 jump hosts"):
        resolve_target(HostSpec("a"), ssh_config_path=cfg)


def test_known_hosts_follow_the_config_like_ssh(home: Path) -> None:
    cfg = write(
        home / ".ssh" / "config",
        "Host pinned\n  UserKnownHostsFile ~/.ssh/pinned_hosts\n  GlobalKnownHostsFile none\n",
    )
    pinned = resolve_target(HostSpec("pinned"), ssh_config_path=cfg)
    assert pinned.known_hosts_files == (str(home / ".ssh" / "pinned_hosts"),)
    assert pinned.trust_file == "~/.ssh/pinned_hosts"
    plain = resolve_target(HostSpec("plain"), ssh_config_path=cfg)
    assert plain.known_hosts_files == (
        "/etc/ssh/ssh_known_hosts",
        "/etc/ssh/ssh_known_hosts2",
        str(home / ".ssh" / "known_hosts"),
        str(home / ".ssh" / "known_hosts2"),
    )
    assert resolve_target(HostSpec("plain"), ssh_config_path=os.devnull, known_hosts_path="/x/kh").known_hosts_files == ("/x/kh",)
