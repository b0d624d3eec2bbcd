require "fileinto";
fileinto "FromGlobalStore";
