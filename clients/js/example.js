// Run with: MESHAGE_NODE=http://127.0.0.1:8080 node clients/js/example.js
// against any node serving the `echo` stream (the README's two nodes, or `meshage demo`).
import { MeshClient, MeshError } from './meshage-client.js';

const mesh = new MeshClient(process.env.MESHAGE_NODE ?? 'http://127.0.0.1:8080', {
  token: process.env.MESHAGE_TOKEN, // for nodes started with --api-tokens
  timeoutMs: 5000,
});

const owner = await mesh.locate('echo', 'alice');
console.log('alice belongs to', owner.serviceId, 'on', owner.endpoint);
console.log('send:', JSON.stringify(await mesh.send('echo', 'alice', { hello: 'world' })));
console.log('broadcast:', (await mesh.broadcast('echo', 'all', { ping: true })).length, 'answers');
console.log('services on echo:', (await mesh.services('echo')).map((s) => s.id).join(' '));
try {
  await mesh.send('nowhere', 'alice', {});
} catch (e) {
  if (!(e instanceof MeshError)) throw e;
  console.log(`error: ${e.status} ${e.kind}: ${e.message}`);
}
