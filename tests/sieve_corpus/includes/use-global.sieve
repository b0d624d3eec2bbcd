require ["include", "variables", "fileinto"];
global "target";
fileinto "${target}";
