"""Developer tools: a Crossplane stand-in for the function protocol, the example renderer."""
