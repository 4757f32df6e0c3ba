import java.time.Duration;
import java.time.Instant;
import java.util.Collection;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.common.Node;

/**
 * Readiness probe for scripts/services.sh: an open TCP port only proves the socket is bound,
 * while a broker that answers a metadata request (cluster id + a live node) can serve clients.
 * Compiled once by services.sh against the broker's own kafka-clients jar, so `up` needs no
 * Python venv and no extra jars.
 *
 * <p>Usage: java -cp 'classes:libs/*' KafkaReady HOST:PORT TIMEOUT_SECONDS
 * Exit 0 when ready (prints the cluster id), 1 when the deadline passes.
 */
public final class KafkaReady {
    // Per-attempt bound: short enough to retry several times inside the caller's budget.
    private static final int ATTEMPT_TIMEOUT_MS = 3_000;
    private static final long RETRY_PAUSE_MS = 500;

    private KafkaReady() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 2) {
            System.err.println("usage: KafkaReady HOST:PORT TIMEOUT_SECONDS");
            System.exit(2);
        }
        Instant deadline = Instant.now().plus(Duration.ofSeconds(Long.parseLong(args[1])));
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, ATTEMPT_TIMEOUT_MS);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, ATTEMPT_TIMEOUT_MS);
        String lastError = "no attempt made";
        try (Admin admin = Admin.create(props)) {
            while (Instant.now().isBefore(deadline)) {
                try {
                    DescribeClusterResult cluster = admin.describeCluster();
                    Collection<Node> nodes =
                            cluster.nodes().get(ATTEMPT_TIMEOUT_MS, TimeUnit.MILLISECONDS);
                    String clusterId =
                            cluster.clusterId().get(ATTEMPT_TIMEOUT_MS, TimeUnit.MILLISECONDS);
                    if (!nodes.isEmpty()) {
                        System.out.println("cluster_id=" + clusterId + " nodes=" + nodes.size());
                        return;
                    }
                    lastError = "metadata answer listed no brokers";
                } catch (Exception e) { // any failure here just means "not ready yet"
                    lastError = e.toString();
                }
                Thread.sleep(RETRY_PAUSE_MS);
            }
        }
        System.err.println("kafka not ready: " + lastError);
        System.exit(1);
    }
}
