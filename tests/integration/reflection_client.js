// reflection_client.js ADDR VERSION - drive a node's gRPC server reflection
// with grpc-js-reflection-client and @grpc/grpc-js: list services, list the
// methods of kv.KVService, build a client from the reflected descriptor and
// call Set then Get with it. Prints one JSON object; exits 1 on error.
'use strict';
const { GrpcReflection } = require('grpc-js-reflection-client');
const grpc = require('@grpc/grpc-js');

const [addr, version] = process.argv.slice(2);

function call(client, method, req) {
    return new Promise((resolve, reject) => {
        const deadline = new Date(Date.now() + 5000);
        client[method](req, { deadline }, (err, resp) =>
            err ? reject(err) : resolve(resp));
    });
}

(async () => {
    const creds = grpc.credentials.createInsecure();
    const r = new GrpcReflection(addr, creds, {}, version);
    const out = {};
    out.services = await r.listServices();
    out.methods = (await r.listMethods('kv.KVService')).map((m) => m.name);
    out.cluster_methods =
        (await r.listMethods('pyazdb.Cluster')).map((m) => m.name);
    const desc = await r.getDescriptorBySymbol('kv.KVService');
    const pkg = desc.getPackageObject({ keepCase: true, longs: String,
                                        enums: String, defaults: true });
    const kv = new pkg.kv.KVService(addr, creds);
    out.set = await call(kv, 'Set', { key: 'reflected', value: 'yes' });
    out.get = await call(kv, 'Get', { key: 'reflected' });
    out.missing = await call(kv, 'Get', { key: 'no-such-key' });
    try {
        await call(kv, 'Get', { key: '' });
        out.empty_key = 'no error';
    } catch (e) {
        out.empty_key = { code: e.code, details: e.details };
    }
    try {
        await r.getDescriptorBySymbol('kv.NoSuchThing');
        out.unknown_symbol = 'no error';
    } catch (e) {
        out.unknown_symbol = String(e.message || e);
    }
    kv.close();
    console.log(JSON.stringify(out));
    process.exit(0);
})().catch((e) => {
    console.error('reflection client failed:', e && (e.stack || e));
    process.exit(1);
});
