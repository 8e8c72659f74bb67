// Validates every object of the YAML files named on the command line against its Kubernetes
// (or Prometheus operator) schema, offline, with kubernetes-models; prints one line per
// object and exits 1 if any is invalid or of an unknown kind.
import fs from "node:fs";
import yaml from "js-yaml";

// The module that holds an apiVersion's classes.
function moduleOf(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/"))
    return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  return `kubernetes-models/${apiVersion}`;
}

let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc) continue;
    const name = `${doc.kind}/${doc.metadata?.name} (${file})`;
    try {
      const models = await import(moduleOf(doc.apiVersion));
      const Model = models[doc.kind];
      if (!Model) throw new Error(`unknown kind ${doc.kind} in ${doc.apiVersion}`);
      new Model(doc).validate();
      console.log(`valid ${name}`);
    } catch (e) {
      failed++;
      console.log(`INVALID ${name}: ${e.message.split("\n").slice(0, 6).join(" | ")}`);
    }
  }
}
process.exit(failed ? 1 : 0);
