require ["include", "fileinto"];
fileinto "BeforeReturn";
return;
fileinto "NeverReached";
