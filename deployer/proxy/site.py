"""The proxy of one environment: where it listens, where the web service listens, its
container, its settings — from deploy.toml's ``[environments.NAME.proxy]`` and, for what
that table leaves out, from the ``ports`` the user's compose file gives the web service.

One proxy container per app and host (``deployer-proxy-<app>``), outside the app's compose
project: ``docker compose down`` of the app does not take the public port with it, and a
release never recreates what routes its requests.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from deployer.commands.compose import ComposeConfig
from deployer.config import Config, Environment
from deployer.errors import ConfigError
from deployer.proxy.haproxy import ProxySettings
from deployer.proxy.runtime import ProxyContainer

CONTAINER_PREFIX = "deployer-proxy-"
LISTEN_PORT = 8080  # inside the proxy container


@dataclass(frozen=True)
class Site:
    name: str  # the proxy container's name
    image: str
    publish: str  # host side: "127.0.0.1:8000" or "80"
    web_port: int  # the web service's port in its containers
    config_dir: str
    mode: str  # auto | overlap | pause
    pause_timeout: float
    drain_timeout: float

    def container(self, network: str) -> ProxyContainer:
        settings = ProxySettings(listen_port=LISTEN_PORT, pause_timeout=max(1, round(self.pause_timeout)))
        return ProxyContainer(name=self.name, image=self.image, network=network, publish=self.publish,
                              config_dir=self.config_dir, settings=settings)


def site_for(config: Config, env: Environment, compose: ComposeConfig) -> Site | None:
    """The environment's proxy (None: it has none). ``compose``: the user's configuration,
    before deployer's override removed the web service's ports."""
    proxy = env.proxy
    if proxy is None:
        return None
    web = config.app.web_service
    service = compose.services.get(web)
    published = service.ports[0] if service and service.ports else None
    listen = proxy.listen
    if listen is None:
        if published is None or published.published is None:
            raise ConfigError(
                f"[environments.{env.name}.proxy] has no `listen`, and the {web} service publishes no fixed port to take it from",
                hint=f'set listen = "127.0.0.1:8000" (where users reach the app) and web_port in [environments.{env.name}.proxy]',
            )
        listen = f"{published.host_ip}:{published.published}" if published.host_ip else str(published.published)
    web_port = proxy.web_port or (published.target if published else None)
    if web_port is None:
        raise ConfigError(
            f"[environments.{env.name}.proxy] has no `web_port`, and the {web} service's ports do not say where it listens",
            hint=f"set web_port = 8000 (the port the app listens on inside its container) in [environments.{env.name}.proxy]",
        )
    return Site(
        name=CONTAINER_PREFIX + config.app.name,
        image=proxy.image,
        publish=listen,
        web_port=web_port,
        config_dir=posixpath.join(env.state_dir, "proxy"),
        mode=proxy.mode,
        pause_timeout=proxy.pause_timeout,
        drain_timeout=proxy.drain_timeout,
    )


def public_address(site: Site) -> tuple[str, int]:
    """Where the proxy answers, as seen on its host (for the prober's tunnel)."""
    address, _, port = site.publish.rpartition(":")
    address = address.strip("[]")
    return (address if address and address != "0.0.0.0" else "127.0.0.1"), int(port)
