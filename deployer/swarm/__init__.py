"""Docker Swarm as the engine of an environment (``engine = "swarm"``): the stack deployer
renders from the user's compose file, the images it carries to the nodes, and the reads of
a stack's services and tasks. See docs/swarm.md."""
