import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.CloseableIterator;

/** A Flink DataStream job of our own: the sum of the squares of 1..n, reduced on the cluster. */
public final class SumOfSquares {
  private SumOfSquares() {}

  public static void main(String[] args) throws Exception {
    long n = Long.parseLong(args[0]);
    StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
    env.setRuntimeMode(RuntimeExecutionMode.BATCH);
    env.setParallelism(2);
    try (CloseableIterator<Long> sums =
        env.fromSequence(1, n)
            .map(x -> x * x)
            .keyBy(x -> 0L)
            .reduce(Long::sum)
            .executeAndCollect("SumOfSquares")) {
      System.out.println("sum_of_squares=" + sums.next());
    }
  }
}
