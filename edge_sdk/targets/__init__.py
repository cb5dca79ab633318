"""Target graphs for execution-provider profiles: static int8 QDQ, deployment and operator coverage."""
