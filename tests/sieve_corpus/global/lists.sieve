require "fileinto";
fileinto "GlobalLists";
