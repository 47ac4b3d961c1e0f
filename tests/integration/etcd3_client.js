// Drives PyazDB's etcd v3 API with the npm etcd3 client library and prints
// one JSON object of results on stdout; test_etcd_npm.py checks it.
//   node etcd3_client.js HOST:PORT[,HOST:PORT...] KEYPREFIX
// Each step catches its own error and records it ({error: "Name: message"}),
// so that one failure shows next to the others. Every call has a deadline
// and the whole run is cut off after 100 s (exit 2, partial results).
'use strict';
const { Etcd3, EtcdLeaseInvalidError, EtcdLockFailedError } =
    require('etcd3');

const hosts = process.argv[2].split(',').map(h => 'http://' + h);
const P = process.argv[3];
const out = {};

const client = new Etcd3({
    hosts,
    dialTimeout: 5000,
    defaultCallOptions: ctx => ctx.isStream ? {}
        : { deadline: Date.now() + 8000 },
});

const killer = setTimeout(() => {
    out.timeout = 'run cut off after 100 s';
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(2);
}, 100000);

const sleep = ms => new Promise(r => setTimeout(r, ms));

function within(ms, what, promise) {
    let t;
    return Promise.race([promise, new Promise((_, rej) => {
        t = setTimeout(() => rej(new Error(`${what}: no answer in ${ms} ms`)),
                       ms);
    })]).finally(() => clearTimeout(t));
}

// Polls cond() every 50 ms until it is true or ms pass; returns the last
// value.
async function until(ms, cond) {
    const end = Date.now() + ms;
    let v = await cond();
    while (!v && Date.now() < end) {
        await sleep(50);
        v = await cond();
    }
    return v;
}

const errText = e => `${e.constructor.name}: ${e.message}`;

async function step(name, fn) {
    try {
        out[name] = await within(30000, name, fn());
    } catch (e) {
        out[name] = { error: errText(e) };
    }
}

// Resolves when the campaign is elected, rejects on its error.
function elected(c) {
    return new Promise((res, rej) => {
        c.once('elected', res);
        c.once('error', rej);
    });
}

async function main() {
    // First: a campaign that is the store's first write (the library waits
    // for the keys created before its own, bounded by its write's revision
    // - 1, which etcd's clients take as "none" when it is 0).
    await step('election', async () => {
        const e = client.election(P + 'e');
        const first = e.campaign('one');
        await within(8000, 'the first campaign', elected(first));
        const observer = await e.observe();
        const changes = [];
        observer.on('change', v => changes.push(v));
        const second = client.election(P + 'e').campaign('two');
        let won = false;
        const secondElected = elected(second).then(() => { won = true; });
        await sleep(500);
        const waited = !won;
        const leader = await e.leader();
        await first.resign();
        await within(8000, 'the second campaign', secondElected);
        await until(5000, () => changes.includes('two'));
        const after = await e.leader();
        await observer.cancel();
        await second.resign();
        return { first_led: leader, second_waited: waited,
                 after_resign: after, observed: changes,
                 left: (await e.leader()) ?? null };
    });

    await step('put_get', async () => {
        await client.put(P + 'k').value('v1');
        return { value: await client.get(P + 'k').string(),
                 missing: await client.get(P + 'nothing').string() };
    });

    await step('prefix', async () => {
        for (const [k, v] of [['p/a', '1'], ['p/b', '2'], ['p/c/d', '3'],
                              ['q', '4']])
            await client.put(P + k).value(v);
        const all = await client.getAll().prefix(P + 'p/').strings();
        return { all,
                 keys: await client.getAll().prefix(P + 'p/').keys(),
                 count: await client.getAll().prefix(P + 'p/').count() };
    });

    await step('delete', async () => {
        const one = await client.delete().key(P + 'p/a');
        const rest = await client.delete().prefix(P + 'p/');
        return { one_deleted: one.deleted,
                 rest_deleted: rest.deleted,
                 left: await client.getAll().prefix(P + 'p/').keys(),
                 q: await client.get(P + 'q').string() };
    });

    await step('txn', async () => {
        await client.put(P + 't').value('0');
        const run = () => client.if(P + 't', 'Value', '==', '0')
            .then(client.put(P + 't').value('1'),
                  client.put(P + 'won').value('yes'))
            .else(client.put(P + 'lost').value('yes'),
                  client.get(P + 't'))
            .commit();
        const first = await run();
        const second = await run();
        const elseGet = second.responses[1].response_range;
        return {
            first_succeeded: first.succeeded,
            second_succeeded: second.succeeded,
            t: await client.get(P + 't').string(),
            won: await client.get(P + 'won').string(),
            lost: await client.get(P + 'lost').string(),
            else_get: elseGet.kvs.map(kv => kv.value.toString()),
        };
    });

    let revokedId = null;
    await step('lease', async () => {
        const lease = client.lease(30, { autoKeepAlive: false });
        const id = await lease.grant();
        await lease.put(P + 'l/a').value('x');
        await lease.put(P + 'l/b').value('y');
        const ka = await lease.keepaliveOnce();
        const withLease = await client.getAll().prefix(P + 'l/').exec();
        const before = await client.getAll().prefix(P + 'l/').keys();
        await lease.revoke();
        revokedId = id;
        return { id_ok: /^[1-9][0-9]*$/.test(id),
                 keepalive_ttl: Number(ka.TTL),
                 keepalive_id_matches: ka.ID === id,
                 key_leases_match: withLease.kvs.every(kv => kv.lease === id),
                 before: before.sort(),
                 after: await client.getAll().prefix(P + 'l/').keys(),
                 revoked: lease.revoked() };
    });

    await step('lease_error', async () => {
        try {
            await client.put(P + 'bad').value('z').lease(revokedId);
            return { error: 'put with a revoked lease succeeded' };
        } catch (e) {
            return { class: e.constructor.name,
                     is_lease_invalid: e instanceof EtcdLeaseInvalidError,
                     message: e.message,
                     key: await client.get(P + 'bad').string() };
        }
    });

    await step('lease_expiry', async () => {
        const lease = client.lease(2);  // kept alive every TTL/3
        let kept = 0;
        lease.on('keepaliveSucceeded', () => { kept++; });
        await lease.grant();
        await lease.put(P + 'e').value('alive');
        const start = Date.now();
        // Outlive the TTL twice over on keepalives alone.
        await until(10000, () => kept >= 3 && Date.now() - start > 4000);
        const alive = await client.get(P + 'e').string();
        lease.release();  // stops the keepalives, does not revoke
        const stopped = Date.now();
        const gone = await until(15000, async () =>
            (await client.get(P + 'e').string()) === null);
        return { keepalives: kept >= 3, held_ms_over_ttl: start + 4000 <= stopped,
                 alive_while_kept: alive, expired: gone,
                 expired_within_s: Math.round((Date.now() - stopped) / 1000) };
    });

    await step('watch', async () => {
        const events = { key: [], prefix: [] };
        const ended = { key: false, prefix: false };
        const wk = await client.watch().key(P + 'w').create();
        const wp = await client.watch().prefix(P + 'wp/').create();
        for (const [name, w] of [['key', wk], ['prefix', wp]]) {
            w.on('put', kv => events[name].push(['put', kv.key.toString(),
                                                  kv.value.toString()]));
            w.on('delete', kv => events[name].push(['delete',
                                                    kv.key.toString()]));
            w.on('end', () => { ended[name] = true; });
            w.on('error', e => events[name].push(['error', errText(e)]));
        }
        await client.put(P + 'w').value('1');
        await client.put(P + 'wp/a').value('2');
        await client.put(P + 'w').value('3');
        await client.put(P + 'wp/b').value('4');
        await client.put(P + 'wpx').value('not in the prefix');
        await client.delete().key(P + 'w');
        await client.delete().prefix(P + 'wp/');
        await until(10000, () => events.key.length >= 3
                    && events.prefix.length >= 4);
        await sleep(200);  // anything extra would show up here
        await within(10000, 'cancel key watcher', wk.cancel());
        await within(10000, 'cancel prefix watcher', wp.cancel());
        const strip = evs => evs.map(e => e[0] === 'error' ? e
            : [e[0], e[1].slice(P.length), ...e.slice(2)]);
        return { key: strip(events.key), prefix: strip(events.prefix),
                 ended };
    });

    await step('lock', async () => {
        const c2 = new Etcd3({ hosts, dialTimeout: 5000 });
        try {
            const log = [];
            const l1 = client.lock(P + 'mutex').ttl(10);
            await l1.acquire();
            log.push('1 acquired');
            let tries = 0, failedWith = null;
            const second = (async () => {
                for (;;) {
                    const l2 = c2.lock(P + 'mutex').ttl(10);
                    try {
                        await l2.acquire();
                        log.push('2 acquired');
                        return l2;
                    } catch (e) {
                        failedWith = e instanceof EtcdLockFailedError
                            ? 'EtcdLockFailedError' : errText(e);
                        if (!(e instanceof EtcdLockFailedError) || ++tries > 200)
                            throw e;
                        await sleep(50);
                    }
                }
            })();
            // Hold the lock while the second contender fails a few times.
            await until(10000, () => tries >= 3);
            log.push('1 releasing');
            await l1.release();
            const l2 = await within(10000, 'second acquire', second);
            await l2.release();
            return { log, failed_tries_while_held: tries >= 3,
                     failed_with: failedWith,
                     lock_key_left: (await client.getAll()
                                     .prefix(P + 'mutex').keys()).length };
        } finally {
            c2.close();
        }
    });
}

main().catch(e => { out.fatal = errText(e); }).then(() => {
    client.close();
    clearTimeout(killer);
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(0);
});
